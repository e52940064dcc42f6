"""MLM masking statistics and NSP pair building (issue 5's numbers)."""
import random

import pytest
import torch

import bertcore
from bertcore.data import DataError
from bertcore.pretraining import local_attention_init, make_nsp_pairs, mask_tokens, read_corpus

WORDS = "the quick brown fox jumps over lazy dog playing played player runs running ran".split()


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    return bertcore.Tokenizer.train(texts, vocab_size=200, min_frequency=1)


def test_mlm_statistics(tok):
    g = torch.Generator().manual_seed(0)
    batch, length = 512, 400
    ids = torch.randint(5, tok.vocab_size, (batch, length), generator=g)
    ids[:, 0] = tok.cls_token_id
    ids[:, 200] = tok.sep_token_id
    lengths = torch.randint(250, length, (batch,), generator=g)
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    ids[pad] = tok.pad_token_id
    ids[torch.arange(batch), lengths - 1] = tok.sep_token_id
    special = tok.special_tokens_mask(ids)

    masked, labels = mask_tokens(ids, tok, generator=g)
    picked = labels != -100
    assert not picked[special].any(), "a special or padding token was picked"
    assert (masked[special] == ids[special]).all()
    assert abs(picked.sum() / (~special).sum() - 0.15) < 0.005
    assert (labels[picked] == ids[picked]).all()
    to_mask = (masked == tok.mask_token_id) & picked
    unchanged = (masked == ids) & picked
    rand = picked & ~to_mask & ~unchanged
    n = picked.sum()
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(rand.sum() / n - 0.1) < 0.01      # random draws equal to the original count as kept (~1/200)
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert not torch.isin(masked[rand], torch.tensor(tok.all_special_ids)).any()
    assert (masked[~picked] == ids[~picked]).all()


def test_mlm_lists_and_probabilities(tok):
    ids = tok(["the quick brown fox", "lazy dog"])["input_ids"]
    masked, labels = mask_tokens(ids, tok, mlm_probability=1.0, mask_prob=1.0, random_prob=0.0)
    assert [len(x) for x in masked] == [len(x) for x in ids]
    for row, lab, orig in zip(masked, labels, ids):
        assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
        assert all(t == tok.mask_token_id for t in row[1:-1])
        assert lab[1:-1] == orig[1:-1] and lab[0] == -100
    with pytest.raises(ValueError):
        mask_tokens(ids, tok, mask_prob=0.9, random_prob=0.2)


def test_whole_word_masking(tok):
    ids = torch.tensor(tok(["foxdog quickbrown lazyfox overthe " * 30])["input_ids"][0])
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert any(t.startswith("##") for t in tokens), tokens[:10]
    for seed in range(5):
        _, labels = mask_tokens(ids, tok, mlm_probability=0.5, whole_word=True,
                                generator=torch.Generator().manual_seed(seed))
        picked = (labels != -100).tolist()
        for i, t in enumerate(tokens):
            if t.startswith("##"):
                assert picked[i] == picked[i - 1], "a word was split by whole-word masking"


def test_nsp_pairs(tok):
    rng = random.Random(1)
    docs = [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 8))]
            for _ in range(3000)]
    pairs = make_nsp_pairs(docs, tok, max_length=32, seed=0)
    assert len(pairs) > 5000
    frac = sum(p["next_sentence_label"] for p in pairs) / len(pairs)
    assert abs(frac - 0.5) < 0.02
    for p in pairs:
        ids, types = p["input_ids"], p["token_type_ids"]
        assert len(ids) == len(types) <= 32
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert ids.count(tok.sep_token_id) == 2 and types[0] == 0 and types[-1] == 1
        if p["next_sentence_label"] == 1:
            assert p["partner_document"] != p["document"]
        else:
            assert p["partner_document"] == p["document"]
    assert make_nsp_pairs(docs, tok, max_length=32, seed=0) == pairs  # seeded


def test_nsp_is_next_is_the_true_continuation(tok):
    docs = [["the quick", "brown fox", "jumps over"], ["lazy dog", "runs"]]
    for seed in range(10):
        for p in make_nsp_pairs(docs, tok, max_length=64, seed=seed, short_seq_prob=0):
            if p["next_sentence_label"] == 0:
                text = tok.decode(p["input_ids"])
                assert text in ("the quick brown fox jumps over", "lazy dog runs")


def test_nsp_pairs_use_a_paragraph_per_line_whole(tok):
    """A line longer than a pair is cut into pieces, not truncated to its first pair: of
    each document's own tokens (A, and B where it is the true continuation), the pairs
    hold most; truncation kept about a third of these paragraphs."""
    rng = random.Random(2)
    docs = [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 200))) for _ in range(3)] for _ in range(40)]
    pairs = make_nsp_pairs(docs, tok, max_length=64, seed=0)
    own = 0
    for p in pairs:
        sep = p["input_ids"].index(tok.sep_token_id)
        own += sep - 1 + (len(p["input_ids"]) - sep - 2 if p["next_sentence_label"] == 0 else 0)
    available = sum(len(tok(line)["input_ids"][0]) - 2 for doc in docs for line in doc)
    assert own / available > 0.85, own / available
    assert all(len(p["input_ids"]) <= 64 for p in pairs)


CHINESE_WORDS = ["中国", "政府", "人民", "日报", "北京", "上海市", "发展", "经济", "的", "了", "新华社", "记者"]


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chars")
    chars = sorted({c for w in CHINESE_WORDS for c in w})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n")
    return bertcore.Tokenizer.from_pretrained(folder)


def segmented_docs(n=400, seed=0):
    rng = random.Random(seed)
    return [[[rng.choice(CHINESE_WORDS) for _ in range(rng.randint(2, 8))] for _ in range(rng.randint(1, 5))]
            for _ in range(n)]


def word_groups(pair, tok):
    """The characters of each segment (A, B), grouped into words by `word_starts`."""
    tokens = tok.convert_ids_to_tokens(pair["input_ids"])
    segments, groups = [], None
    for t, start in zip(tokens, pair["word_starts"]):
        if t in ("[CLS]", "[SEP]"):
            if groups:
                segments.append(groups)
            groups = []
        elif start or not groups:
            groups.append(t)
        else:
            groups[-1] += t
    return segments


def test_nsp_pairs_of_segmented_sentences_carry_word_starts(char_tok):
    """A sentence given as its words (a segmenter's output, as Chinese BERT-wwm uses) marks
    where words start; only a word cut by truncation at a segment's edge may be partial."""
    pairs = make_nsp_pairs(segmented_docs(), char_tok, max_length=24, seed=0)
    assert len(pairs) > 300
    for p in pairs:
        assert len(p["word_starts"]) == len(p["input_ids"])
        for groups in word_groups(p, char_tok):
            assert all(g in CHINESE_WORDS for g in groups[1:-1]), groups
            if len(groups) == 1:
                assert any(groups[0] in w for w in CHINESE_WORDS), groups
            else:
                assert any(w.endswith(groups[0]) for w in CHINESE_WORDS), groups
                assert any(w.startswith(groups[-1]) for w in CHINESE_WORDS), groups
    strings = [["".join(s) for s in d] for d in segmented_docs()]
    plain = make_nsp_pairs(strings, char_tok, max_length=24, seed=0)
    assert [p["input_ids"] for p in plain] == [p["input_ids"] for p in pairs]  # same text, same pairs
    assert "word_starts" not in plain[0]
    # Unsegmented sentences beside segmented ones: each character is a word of its own.
    mixed = make_nsp_pairs([d if k % 2 else strings[k] for k, d in enumerate(segmented_docs())], char_tok,
                           max_length=24, seed=0)
    assert [p["input_ids"] for p in mixed] == [p["input_ids"] for p in pairs]
    for p, q in zip(mixed, pairs):
        if p["document"] % 2 == 0 and p["partner_document"] % 2 == 0:
            assert all(p["word_starts"]), p
        elif p["document"] % 2 and p["partner_document"] % 2:
            assert p["word_starts"] == q["word_starts"]


def test_whole_word_masking_over_segmented_pairs(char_tok):
    """The MLM head masks a segmented word's characters together; without the segmentation
    every Chinese character is a word of its own and words get split."""
    cfg = bertcore.BertConfig(vocab_size=char_tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64)
    head = bertcore.create_head("mlm", cfg, mlm_probability=0.5, whole_word=True)
    head.prepare(char_tok)
    head.train()
    pairs = make_nsp_pairs(segmented_docs(), char_tok, max_length=24, seed=0)

    def split_words(with_starts):
        feats = [head.encode(p if with_starts else {k: v for k, v in p.items() if k != "word_starts"}, char_tok)[0]
                 for p in pairs]
        torch.manual_seed(0)
        labels = head.collate_labels(feats, {})["labels"].tolist()
        starts = [s for p in pairs for s in p["word_starts"]]
        split, owner = 0, None
        for i, start in enumerate(starts):
            if start:
                owner = i
            elif (labels[i] != -100) != (labels[owner] != -100):
                split += 1
        return split, sum(x != -100 for x in labels)

    split, picked = split_words(with_starts=True)
    assert split == 0 and picked > 0
    assert split_words(with_starts=False)[0] > 50


def test_nsp_needs_two_documents(tok):
    with pytest.raises(ValueError, match="2 documents"):
        make_nsp_pairs([["a b", "c d"]], tok)


def test_read_corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("s1\ns2\n\n\ns3\n  \ns4\ns5\n", encoding="utf-8")
    assert read_corpus(f) == [["s1", "s2"], ["s3"], ["s4", "s5"]]
    g = tmp_path / "gbk.txt"
    g.write_bytes("中文句子。\n\n第二篇。\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.txt:1: byte 0xd6 at column 1 is not UTF-8"):
        read_corpus(str(g))                                   # never guessed
    assert read_corpus(str(g), encoding="gb18030") == [["中文句子。"], ["第二篇。"]]
    assert read_corpus([["a"], ["b"]]) == [["a"], ["b"]]


def attention_weights(encoder, ids):
    """Layer 0's attention probabilities (heads, T, T) in fp64, computed here from the
    embedding output and the query/key weights (not through the model's attention kernel)."""
    c = encoder.config
    with torch.no_grad():
        x = encoder.embeddings(ids, torch.zeros_like(ids), torch.arange(len(ids))).double()    # (T, H)
        qkv = encoder.encoder.layer[0].attention.self
        q = (x @ qkv.query.weight.double().t() + qkv.query.bias.double()).view(len(ids), c.num_attention_heads, -1)
        k = (x @ qkv.key.weight.double().t() + qkv.key.bias.double()).view(len(ids), c.num_attention_heads, -1)
        return (torch.einsum("ihd,jhd->hij", q, k) / c.head_dim ** 0.5).softmax(-1)         # (nh, T, T)


def mass_at(weights, head, offset):
    """Mean attention weight from position i to i + offset, over the positions that have one."""
    n = weights.shape[-1]
    rows = [i for i in range(n) if 0 <= i + offset < n]
    return float(torch.stack([weights[head, i, i + offset] for i in rows]).mean())


def test_local_attention_init_points_heads_at_their_offsets():
    cfg = bertcore.BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=256, max_position_embeddings=32, initializer_range=0.08)
    torch.manual_seed(0)
    encoder = bertcore.BertEncoder(cfg).eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    ids = torch.randint(5, 500, (32,), generator=torch.Generator().manual_seed(1))
    random_start = attention_weights(encoder, ids)
    assert max(mass_at(random_start, h, o) for h in range(4) for o in (-1, 2)) < 0.2   # BERT's init is not local

    assert local_attention_init(encoder, (-1, 2), seed=3) is encoder
    local = attention_weights(encoder, ids)
    assert mass_at(local, 0, -1) > 0.6 and mass_at(local, 1, 2) > 0.6        # 0.86 and 0.85 with these seeds
    # Heads past the offsets, and everything but the query/key weights, keep their init.
    after = encoder.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"encoder.layer.{i}.attention.self.{p}.weight" for i in (0, 1) for p in ("query", "key")}
    for p in ("query", "key"):                  # rows of heads 2 and 3 (head_dim 32)
        name = f"encoder.layer.0.attention.self.{p}.weight"
        assert torch.equal(after[name][64:], before[name][64:])
    assert torch.equal(local[2:], random_start[2:])
    with pytest.raises(ValueError, match="5 offsets for 4 attention heads"):
        local_attention_init(encoder, (1, 2, 3, 4, 5))
