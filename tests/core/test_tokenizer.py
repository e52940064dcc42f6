"""bertcore.Tokenizer against an independent reference: transformers.BertTokenizerFast
loading the same files (MiniLM's vocabulary, or one we trained and saved)."""
import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from bertcore.tokenizer import Tokenizer

HANDWRITTEN = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "CamelCase and ALLCAPS and mIxEd CaSe",
    "Crème brûlée, naïve café, Ångström, São Paulo, Đặng, Øresund",
    "e\u0301 combining accent, and precomposed é",
    "你好，世界！我喜欢自然语言处理。",
    "日本語のテキストとカタカナ、한국어 문장도 있습니다",
    "Mixed 中文 and English 混合 text123",
    "emoji 🙂🚀 family 👩‍👩‍👧 flags 🇩🇪 and ❤️",
    "tabs\tand\nnewlines\r\nand  double  spaces   ",
    "non\u00a0breaking\u2003em space\u3000ideographic space",
    "zero\u200bwidth and soft\u00adhyphen and control\x07bell",
    "punctuation!!! ??? ... --- ((nested)) [brackets] {braces} <angle>",
    "it's don't won't o'clock rock'n'roll",
    "numbers 3.14159 1,000,000 42% $19.99 #hashtag @mention",
    "https://example.com/path?query=1&b=2 user@example.org",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום",
    "a [MASK] in text and [CLS] [SEP] [PAD] [UNK] literally",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 150,  # one word over max_input_chars_per_word=100 -> [UNK]
    " ".join(["long"] * 700),  # over 512 tokens: truncation matters
]

FRAGMENTS = [
    "the", "The", "cat", "sat", "on", "mat", "Ünïcödé", "résumé", "naïve", "façade",
    "中", "文", "字", "北京", "上海", "東京", "😀", "🎉", "👍🏽", "!", "?", ",", ".", ";", ":",
    "'", '"', "-", "—", "(", ")", "$", "%", "&", "2024", "3.5", "1e-9", "\t", "\n", "  ",
    "\u00a0", "HELLO", "World", "transformers", "tokenization", "unbelievable", "Zürich",
    "straße", "ﬁ", "Ⅻ", "½", "ß", "İstanbul", "ǅ", "a" * 120, "[MASK]", "##ing", "...",
]


def corpus(n=300, seed=0):
    """Handwritten strings plus n seeded combinations of fragments."""
    rng = random.Random(seed)
    texts = list(HANDWRITTEN)
    for _ in range(n):
        k = rng.randint(0, 25)
        sep = rng.choice([" ", "", "  ", "\t"])
        texts.append(sep.join(rng.choice(FRAGMENTS) for _ in range(k)))
    return texts


TEXTS = corpus()
KEYS = ("input_ids", "token_type_ids", "attention_mask")


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def hf(minilm_dir):
    return BertTokenizerFast.from_pretrained(minilm_dir)


def assert_same(ours, ref, keys=KEYS):
    for key in keys:
        assert ours[key] == [list(x) if isinstance(x, (list, tuple)) else x for x in ref[key]], key


# ------------------------------------------------------------------ encoding

@pytest.mark.parametrize("max_length", [16, 128, 512])
def test_texts_match_hf(tok, hf, max_length):
    ours = tok(TEXTS, max_length=max_length)
    ref = hf(TEXTS, max_length=max_length, truncation=True)
    assert_same(ours, ref)
    assert max(len(r) for r in ours["input_ids"]) == max_length  # something was truncated


def test_vocab_txt_pipeline_matches_hf(minilm_dir, tmp_path, hf):
    """Without tokenizer.json we build BERT's pipeline ourselves from vocab.txt."""
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    ours = Tokenizer.from_pretrained(tmp_path)
    assert_same(ours(TEXTS, return_offsets=True), hf(TEXTS, truncation=True, max_length=512,
                                                    return_offsets_mapping=True),
                KEYS + ("offset_mapping",))
    # the file path form, and tokenizer_config.json switching to a cased pipeline
    assert Tokenizer.from_pretrained(tmp_path / "vocab.txt")(TEXTS)["input_ids"] == ours(TEXTS)["input_ids"]
    config = {"do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    cased, hf_cased = Tokenizer.from_pretrained(tmp_path), BertTokenizerFast.from_pretrained(tmp_path)
    assert_same(cased(TEXTS), hf_cased(TEXTS, truncation=True, max_length=512))
    assert cased("Hello")["input_ids"] != ours("Hello")["input_ids"]


def test_tokenizer_config_overrides_tokenizer_json(minilm_dir, tmp_path):
    """transformers builds BERT's normalizer from tokenizer_config.json; so do we."""
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ours, ref = Tokenizer.from_pretrained(tmp_path / "tokenizer.json"), BertTokenizerFast.from_pretrained(tmp_path)
    assert_same(ours(TEXTS), ref(TEXTS, truncation=True, max_length=512))
    assert ours("Hello")["input_ids"] != ours("hello")["input_ids"]


def test_batch_and_tokenizer_pickle(tok):
    """DataLoader workers pickle both."""
    batch = tok(["a b", "c"], padding=True, return_tensors="pt")
    again = pickle.loads(pickle.dumps(batch))
    assert torch.equal(again["input_ids"], batch["input_ids"]) and again.word_ids(1) == [None, 0, None, None]
    assert pickle.loads(pickle.dumps(tok))("a b") == tok("a b")
    moved = batch.to("cpu")
    assert isinstance(moved, type(batch)) and moved.sequence_ids(0) == batch.sequence_ids(0)


def test_single_str_is_batch_of_one(tok, hf):
    batch = tok("Hello there")
    assert batch["input_ids"] == [hf("Hello there")["input_ids"]]
    assert batch["attention_mask"] == [[1] * len(batch["input_ids"][0])]
    assert batch.input_ids is batch["input_ids"]
    assert tok([])["input_ids"] == []


@pytest.mark.parametrize("truncation", ["longest_first", True, "only_second", "only_first"])
def test_pairs_match_hf(tok, hf, truncation):
    rng = random.Random(1)
    first = TEXTS[:120]
    second = [rng.choice(TEXTS) for _ in first]
    if truncation == "only_second":  # the side that is kept whole must fit
        first = [t[:20] for t in first]
    elif truncation == "only_first":
        second = [t[:20] for t in second]
    max_length = 40
    ours = tok(first, second, max_length=max_length, truncation=truncation, return_offsets=True)
    ref = hf(first, second, max_length=max_length, truncation=truncation, return_offsets_mapping=True)
    assert_same(ours, ref, KEYS + ("offset_mapping",))
    for i in range(len(first)):
        assert ours.sequence_ids(i) == ref.sequence_ids(i)
        assert ours.word_ids(i) == ref.word_ids(i)
    row = ours["token_type_ids"][2]
    assert row[0] == 0 and row[-1] == 1  # [CLS] A [SEP] is segment 0, B [SEP] segment 1


def test_offsets_match_hf(tok, hf):
    ours = tok(TEXTS, max_length=64, return_offsets=True)
    ref = hf(TEXTS, max_length=64, truncation=True, return_offsets_mapping=True)
    assert_same(ours, ref, ("offset_mapping",))
    assert ours["offset_mapping"][2][0] == (0, 0) and ours["offset_mapping"][2][-1] == (0, 0)
    text = "Hello, wörld"
    spans = tok(text, return_offsets=True)["offset_mapping"][0][1:-1]
    assert [text[a:b] for a, b in spans] == ["Hello", ",", "wörld"]


@pytest.mark.parametrize("max_length,stride", [(32, 0), (32, 8), (64, 16), (384, 128)])
def test_overflow_windows_match_hf(tok, hf, max_length, stride):
    """QA over long contexts: question + windows of the context overlapping by stride."""
    questions = ["What is the capital?", "Who wrote it?", "中文问题？", "short"]
    contexts = [" ".join(TEXTS[20:60]), "tiny context", " ".join(TEXTS[100:300]), ""]
    kwargs = dict(max_length=max_length, stride=stride, truncation="only_second", padding=True)
    ours = tok(questions, contexts, return_overflowing=True, return_offsets=True, **kwargs)
    ref = hf(questions, contexts, return_overflowing_tokens=True, return_offsets_mapping=True, **kwargs)
    assert_same(ours, ref, KEYS + ("offset_mapping", "overflow_to_sample_mapping"))
    assert len(ours["input_ids"]) > len(questions)  # windows were made
    for i in range(len(ours["input_ids"])):
        assert ours.sequence_ids(i) == ref.sequence_ids(i)


def test_split_into_words_word_ids_match_hf(tok, hf):
    rng = random.Random(2)
    words = [[rng.choice(FRAGMENTS).strip() or "x" for _ in range(rng.randint(1, 12))] for _ in range(60)]
    ours = tok(words, is_split_into_words=True, max_length=24)
    ref = hf(words, is_split_into_words=True, max_length=24, truncation=True)
    assert_same(ours, ref)
    for i in range(len(words)):
        assert ours.word_ids(i) == ref.word_ids(i)
    one = tok(["New", "York", "unbelievable"], is_split_into_words=True)
    assert len(one["input_ids"]) == 1 and one.word_ids(0)[0] is None and one.word_ids(0)[-2] == 2


def test_padding_and_tensors(tok, hf):
    texts = TEXTS[:50]
    ours = tok(texts, max_length=48, padding="max_length", return_tensors="pt")
    ref = hf(texts, max_length=48, truncation=True, padding="max_length", return_tensors="pt")
    for key in KEYS:
        assert ours[key].dtype == torch.long and ours[key].shape == (50, 48)
        assert torch.equal(ours[key], ref[key])
    longest = tok(texts, padding=True, return_tensors="pt", return_offsets=True)
    ref = hf(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    assert torch.equal(longest["input_ids"], ref["input_ids"])
    assert longest["offset_mapping"].shape == (*longest["input_ids"].shape, 2)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a", "a b c"], return_tensors="pt")
    assert tok(["a b", "c d"], return_tensors="pt")["input_ids"].shape == (2, 4)
    # "np" (onnxruntime's input) and add_special_tokens=False, as transformers gives them (both were refused)
    ours, ref = tok(texts, padding=True, return_tensors="np"), hf(texts, padding=True, truncation=True,
                                                                   max_length=512, return_tensors="np")
    for key in KEYS:
        assert ours[key].dtype == np.int64 and np.array_equal(ours[key], ref[key])
    for kw in ({"max_length": 512, "truncation": True}, {"max_length": 8, "truncation": True}):
        assert_same(tok(texts, add_special_tokens=False, **kw), hf(texts, add_special_tokens=False, **kw))
        assert_same(tok(texts[:9], texts[9:18], add_special_tokens=False, **kw),
                    hf(texts[:9], texts[9:18], add_special_tokens=False, **kw))


# --------------------------------------------------------- vocabulary, decode

def test_vocabulary_and_special_ids(tok, hf):
    assert len(tok) == tok.vocab_size == len(hf) == 30522
    assert tok.vocab == hf.get_vocab()
    for name in ("pad", "cls", "sep", "mask", "unk"):
        assert getattr(tok, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert sorted(tok.all_special_ids) == sorted(hf.all_special_ids)
    ids = tok(["a [MASK] b", "longer text here"], padding=True)["input_ids"]
    expected = [hf.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids]
    assert tok.special_tokens_mask(ids) == expected
    assert tok.special_tokens_mask(ids[0]) == expected[0]
    assert torch.equal(tok.special_tokens_mask(torch.tensor(ids)), torch.tensor(expected).bool())
    tokens = tok.convert_ids_to_tokens(ids[1])
    assert tokens == hf.convert_ids_to_tokens(ids[1])
    assert tok.convert_tokens_to_ids(tokens) == ids[1]
    assert tok.convert_tokens_to_ids("no-such-token") == tok.unk_token_id
    assert tok.convert_ids_to_tokens(101) == "[CLS]"


def test_decode_round_trip(tok, hf):
    text = "the quick brown fox jumps over the lazy dog, unbelievably"
    ids = tok(text)["input_ids"][0]
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode(ids, skip_special_tokens=False) == f"[CLS] {text} [SEP]"
    batch = tok(TEXTS[:80], padding=True)["input_ids"]
    assert tok.batch_decode(batch) == hf.batch_decode(batch, skip_special_tokens=True)
    assert tok.batch_decode(torch.tensor(batch)) == tok.batch_decode(batch)


# ------------------------------------------------------------ train and save

TRAIN_CORPUS = [
    "我们在北京学习自然语言处理和机器翻译。",
    "今天天气很好，我们去公园散步吧。",
    "The tokenizer learns word pieces from this small corpus.",
    "Learning learned learner learns: pieces of words are learned.",
    "Mixed 中文 and English sentences, like 机器 learning 学习.",
    "Transformers use tokenization; tokenizers tokenize text into tokens.",
] * 20


def test_train_save_and_load_in_transformers(tmp_path):
    tok = Tokenizer.train(iter(TRAIN_CORPUS), vocab_size=300, min_frequency=2)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id] == [0, 1, 2, 3, 4]
    assert len(tok) <= 300
    # Chinese splits per character, so every Chinese token is a single character
    pieces = tok.convert_ids_to_tokens(tok("我们在北京学习")["input_ids"][0])
    assert pieces == ["[CLS]", "我", "们", "在", "北", "京", "学", "习", "[SEP]"]
    assert tok("learning tokenizers")["input_ids"][0].count(tok.unk_token_id) == 0

    saved = tok.save_pretrained(tmp_path / "tok")
    assert {p.name for p in saved.iterdir()} == {
        "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert (saved / "vocab.txt").read_text(encoding="utf-8").splitlines()[:5] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    probe = TRAIN_CORPUS[:6] + ["Unseen 词语 WORDS, 😀 and ä accents", "", "a [MASK] b"]
    hf = BertTokenizerFast.from_pretrained(saved)
    assert_same(tok(probe, probe[::-1]), hf(probe, probe[::-1], truncation=True, max_length=512))
    again = Tokenizer.from_pretrained(saved)
    assert again.vocab == tok.vocab
    assert again(probe, return_offsets=True) == tok(probe, return_offsets=True)
    # the vocab.txt alone rebuilds the same tokenizer (with the saved config)
    (saved / "tokenizer.json").unlink()
    assert Tokenizer.from_pretrained(saved)(probe) == tok(probe)


def test_train_cased(tmp_path):
    tok = Tokenizer.train(TRAIN_CORPUS, vocab_size=200, lowercase=False)
    assert tok("The")["input_ids"] != tok("the")["input_ids"]
    hf = BertTokenizerFast.from_pretrained(tok.save_pretrained(tmp_path))
    probe = ["The Tokenizer", "THE tokenizer", "Mixed 中文"]
    assert_same(tok(probe), hf(probe, truncation=True, max_length=512))


# ----------------------------------------------------------------- bad input

def test_bad_input(tok):
    with pytest.raises(ValueError, match="512"):
        tok("hello", max_length=600)
    with pytest.raises(ValueError, match="only_second"):
        tok("hello", truncation="only_second")
    with pytest.raises(ValueError, match="truncation"):
        tok("hello", truncation="sideways")
    with pytest.raises(ValueError, match="stride"):
        tok("q", "a b c " * 50, max_length=16, stride=20, truncation="only_second",
            return_overflowing=True)
    with pytest.raises(ValueError, match="too short"):  # the question alone exceeds max_length
        tok("long question " * 20, "context", max_length=16, truncation="only_second")
    with pytest.raises(TypeError, match="is_split_into_words"):
        tok([["already", "split"]])
    with pytest.raises(TypeError, match=r"texts must be a list of str; entry 1 is NoneType None"):   # was: "got list"
        tok(["a text", None])


def test_missing_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_saved_models_folder_loads_its_tokenizer_and_its_encoder_names_it(tmp_path):
    """save_pretrained writes model/encoder and model/tokenizer: Tokenizer.from_pretrained
    of model/ (as transformers loads a model folder's tokenizer) said "holds neither
    tokenizer.json nor vocab.txt", and of model/encoder gave no hint where it was."""
    import bertcore
    words = [f"w{i}" for i in range(30)]
    tok = Tokenizer.train([" ".join(random.Random(i).sample(words, 6)) for i in range(40)], vocab_size=60)
    cfg = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=32)
    model = bertcore.TaskModel(bertcore.BertEncoder(cfg), {"mlm": bertcore.create_head("mlm", cfg)}, tokenizer=tok)
    model.save_pretrained(tmp_path / "model")
    assert Tokenizer.from_pretrained(tmp_path / "model").vocab == tok.vocab
    beside = r"the model's tokenizer is saved beside this encoder: .*model/tokenizer$"
    with pytest.raises(FileNotFoundError, match=beside):
        Tokenizer.from_pretrained(tmp_path / "model" / "encoder")


def test_a_damaged_vocabulary_is_refused_at_load_naming_file_and_line(tmp_path):
    """Before: a repeated token loaded, trained, then failed at the first save ("ids are not
    contiguous"); a non-UTF-8 file and a config value of the wrong type named no file."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "bad"]
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tokens + ["good"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{folder / 'vocab.txt'}:9: token 'good' repeats line 6"):
        Tokenizer.from_pretrained(folder)

    (folder / "vocab.txt").write_bytes("\n".join(tokens + ["caf\u00e9"]).encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{folder / 'vocab.txt'}: not UTF-8 \(byte 0xe9 at \d+\); re-save"):
        Tokenizer.from_pretrained(folder)

    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    for value, expected in (('"yes"', "do_lower_case is \"yes\"; expected true or false"),
                            ("1", "do_lower_case is 1; expected true or false")):
        (folder / "tokenizer_config.json").write_text(f'{{"do_lower_case": {value}}}', encoding="utf-8")
        with pytest.raises(ValueError, match=f"tokenizer_config.json: {expected}"):
            Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text('{"strip_accents": null}', encoding="utf-8")
    assert Tokenizer.from_pretrained(folder).vocab_size == len(tokens)
