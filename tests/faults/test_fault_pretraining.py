"""Fault suite, pretraining input and the encoder's own input checks: corpora that are
missing, folders, mixed lists, invisible separator lines, documents of the wrong shape,
settings that mask nothing, tokenizers that cover nothing, and tensors the encoder
cannot embed. Each is refused up front with one line naming the problem and the fix;
nothing is silently merged, dropped, read from a file by accident, or mislabelled."""
import logging
import random

import pytest
import torch

import bertcore
from bertcore.cli import main
from bertcore.masking import make_nsp_pairs, mask_tokens, read_corpus
from bertcore.model import BertEncoder
from bertcore.pretraining import pretrain
from bertcore.training import TrainingArgs
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "good great fine bad awful poor movie film plot actor the a".split()
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    return bertcore.Tokenizer.train([" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(50)],
                                    vocab_size=60, min_frequency=1)


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(0)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(2, 4))]
            for _ in range(12)]


def targs(out, **kw):
    return TrainingArgs(str(out), **{"max_steps": 1, "batch_size": 8, "max_length": 32, "progress": False, **kw})


# ---- the corpus -----------------------------------------------------------------------

def test_a_corpus_path_that_is_missing_or_a_folder_is_said_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    # Before: the path itself became the corpus's one line of text, [["missing.txt"]].
    with pytest.raises(FileNotFoundError, match="corpus file missing.txt does not exist"):
        read_corpus("missing.txt")
    with pytest.raises(IsADirectoryError, match="corpus file folder is a folder; name a file"):
        read_corpus("folder")
    with pytest.raises(FileNotFoundError, match="corpus file missing.txt does not exist"):
        pretrain("missing.txt", None, bertcore.BertConfig(**TINY), targs(tmp_path / "out"))
    assert read_corpus("a b\nc d\n\ne f") == [["a b", "c d"], ["e f"]]      # text with line breaks is text


def test_a_line_that_names_a_file_is_not_replaced_by_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "LICENSE").write_text("private words\n", encoding="utf-8")
    # Before: the line "LICENSE" was replaced by the file's content, silently.
    with pytest.raises(ValueError, match=r"mixes file paths \('LICENSE'\) with lines of text \('hello world'\)"):
        read_corpus(["hello world", "LICENSE", "", "good movie"])
    (tmp_path / "b.txt").write_text("x y\n", encoding="utf-8")
    assert read_corpus(["LICENSE", "b.txt"]) == [["private words"], ["x y"]]      # a list of files
    assert read_corpus([tmp_path / "LICENSE", "", "hello"]) == [["private words"], ["hello"]]  # Path + lines


def test_corpus_entries_of_the_wrong_type_name_the_entry():
    # Before: "expected str, bytes or os.PathLike object, not list" from pathlib.
    with pytest.raises(TypeError, match="corpus entry 1 is of type list"):
        read_corpus(["good movie", ["bad plot"]])
    with pytest.raises(TypeError, match="a corpus is a file path, a list of lines or a list of documents, got bytes"):
        read_corpus(b"good movie")


def test_invisible_lines_separate_documents(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("a b\nc d\n\x00\ne f\n\u200b\ng h\n \ufeff \ni j\n", encoding="utf-8")
    # Before: a line of NUL, a zero-width space or a stray BOM merged its neighbours into one document.
    assert read_corpus(f) == [["a b", "c d"], ["e f"], ["g h"], ["i j"]]
    assert read_corpus(["a b", "\x00", "c d"]) == [["a b"], ["c d"]]


# ---- NSP pairs and masks ----------------------------------------------------------------

def test_documents_of_the_wrong_shape_are_refused(tok):
    # Before: each character of a string document became a sentence of its own.
    with pytest.raises(TypeError, match="document 0 is a str, not a list of sentences"):
        make_nsp_pairs(["good movie great plot", "bad film awful actor"], tok)
    with pytest.raises(TypeError, match=r"document 1, sentence 0 is None; a sentence is a string or a list"):
        make_nsp_pairs([["good movie"], [None, "bad film"]], tok)
    with pytest.raises(ValueError, match=r"nsp_probability must lie in \[0, 1\], got 2"):
        make_nsp_pairs([["good movie"], ["bad film"]], tok, nsp_probability=2)
    with pytest.raises(TypeError, match="max_length must be a whole number, got 16.5"):
        make_nsp_pairs([["good movie"], ["bad film"]], tok, max_length=16.5)


def test_pairs_name_the_documents_they_came_from(tok):
    docs = [["\x00"], ["good movie great", "plot fine actor"], ["bad film", "awful plot"]]
    pairs = make_nsp_pairs(docs, tok, seed=0, short_seq_prob=0, nsp_probability=0)
    # Before: indices counted the kept documents, so a dropped first one shifted them all.
    assert {p["document"] for p in pairs} == {1, 2}
    for p in pairs:
        assert tok.decode(p["input_ids"]) == " ".join(docs[p["document"]])


def test_word_starts_that_do_not_match_the_tokens_are_refused(tok):
    ids = tok(["good movie great plot", "bad film"])["input_ids"]
    swapped = [[True] * len(ids[1]), [True] * len(ids[0])]            # same total, other rows
    # Before: flattened and applied to the wrong tokens.
    with pytest.raises(ValueError, match="word_starts must match input_ids sequence by sequence"):
        mask_tokens(ids, tok, whole_word=True, word_starts=swapped)
    batch = torch.tensor([ids[0]] * 3)
    with pytest.raises(ValueError, match=rf"word_starts has shape \({len(ids[0])},\), input_ids has \(3, {len(ids[0])}\)"):
        mask_tokens(batch, tok, whole_word=True, word_starts=torch.ones(len(ids[0]), dtype=torch.bool))  # broadcast
    with pytest.raises(TypeError, match="input_ids must hold integer token ids, got torch.float32"):
        mask_tokens(torch.tensor([[2.0, 7.5, 3.0]]), tok)                # was truncated to 7


def test_a_vocabulary_of_specials_only_masks_nothing_without_crashing(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    tok = bertcore.Tokenizer.from_pretrained(tmp_path)
    # Before: RuntimeError "random_ expects 'from' to be less than 'to'".
    ids, labels = mask_tokens(torch.tensor([2, 1, 1, 3]), tok, mlm_probability=1.0)
    assert ids.tolist() == [2, 1, 1, 3] and labels.tolist() == [-100] * 4


def test_an_mlm_head_with_impossible_rates_is_refused_when_built():
    cfg = bertcore.BertConfig(vocab_size=60, **TINY)
    # Before: accepted, and the error came at the first batch, deep in training.
    with pytest.raises(ValueError, match="mlm head needs 0 <= mlm_probability <= 1"):
        bertcore.create_head("mlm", cfg, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mask_prob \\+ random_prob <= 1"):
        bertcore.create_head("mlm", cfg, mask_prob=0.9, random_prob=0.2)


# ---- pretrain() ---------------------------------------------------------------------------

@pytest.mark.parametrize("probability", [0.0, 1.0, -0.1])
def test_pretraining_that_would_mask_nothing_or_everything_is_refused(tmp_path, docs, tok, probability):
    out = tmp_path / "run"
    # Before: 0 trained NSP alone with MLM silent; -0.1 failed at the first batch after
    # writing the tokenizer into the run folder.
    with pytest.raises(ValueError, match=rf"mlm_probability={probability}: the share of tokens masked must lie in"):
        pretrain(docs, None, bertcore.BertConfig(**TINY), targs(out), vocab_size=60, mlm_probability=probability)
    assert not out.exists()


def test_pretrain_settings_out_of_range_are_refused(tmp_path, docs, tok):
    cfg = bertcore.BertConfig(**TINY)
    with pytest.raises(ValueError, match=r"eval_fraction=1.0 must lie in \[0, 1\)"):       # was "got 0 documents"
        pretrain(docs, tok, cfg, targs(tmp_path / "a"), eval_fraction=1.0)
    with pytest.raises(ValueError, match=r"whole_word='no'; expected True or False"):   # was: whole-word masking on
        pretrain(docs, tok, cfg, targs(tmp_path / "a"), whole_word="no")
    with pytest.raises(ValueError, match="max_eval_pairs=-1 must be a whole number >= 1"):  # was: last pair dropped
        pretrain(docs, tok, cfg, targs(tmp_path / "b"), max_eval_pairs=-1)


def test_a_corpus_without_sentence_pairs_is_said_so(tmp_path, tok):
    # Before: "no training features for mlm+nsp: the data is empty" for a corpus of 8 documents.
    with pytest.raises(ValueError, match="give no sentence pairs: a pair needs a document of 2 sentences"):
        pretrain([["a"]] * 8, tok, bertcore.BertConfig(**TINY), targs(tmp_path / "run"))


def test_a_tokenizer_that_covers_nothing_of_the_corpus_is_refused(tmp_path, tok):
    corpus = [["∂∂ ∆∆ ∑", "∑∑ ∆"]] * 8
    # Before: trained on pairs of [UNK] alone: MLM never masked a token, NSP reported 1.0.
    with pytest.raises(ValueError, match=r"every token of the corpus is \[UNK\].*MLM would mask nothing"):
        pretrain(corpus, tok, bertcore.BertConfig(**TINY), targs(tmp_path / "run"))


# ---- bertcore pretrain ------------------------------------------------------------------

def test_cli_pretrain_names_the_flag_at_fault(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("good movie\nbad plot\n\nfine film\n", encoding="utf-8")

    def run(*extra, corpus=corpus):
        code = main(["pretrain", "--corpus", str(corpus), "--output", str(tmp_path / "out"), "--vocab-size", "60",
                     "--hidden-size", "32", "--layers", "1", "--heads", "2", "--no-progress", *extra])
        return code, one_line_error(capsys.readouterr().err, "pretrain")

    code, line = run()                                    # a corpus file whose lines are not blank-separated
    assert code == 2 and ("the corpus has 2 documents; pretraining needs at least 4 (documents are separated by "
                          "blank lines)") in line
    (tmp_path / "one.txt").write_text("good movie\n", encoding="utf-8")
    code, line = run(corpus=tmp_path / "one.txt")
    assert code == 2 and "the corpus has 1 document;" in line                        # before: "1 documents"
    code, line = run(corpus=tmp_path)                     # before: "corpus file ... does not exist"
    assert code == 2 and f"corpus file {tmp_path} is a folder" in line
    code, line = run("--max-length", "600")               # before: "max_position_embeddings=600 exceeds ..."
    assert code == 2 and "--max-length 600 exceeds BERT's 512 positions; use at most 512" in line
    code, line = run("--mlm-probability", "0")            # before: trained with no MLM at all
    assert code == 2 and "--mlm-probability 0 masks no token" in line
    corpus.write_text("\n\n".join(["good movie\nbad plot", "fine film\nthe actor", "a plot\npoor film",
                                    "great actor\nawful movie"]) + "\n", encoding="utf-8")
    code = main(["pretrain", "--corpus", str(corpus), "--output", str(tmp_path / "out"), "--vocab-size", "1",
                 "--hidden-size", "32", "--layers", "1", "--heads", "2", "--no-progress"])
    line = one_line_error(capsys.readouterr().err, "pretrain")   # before: trained on 25 ids, said nothing
    assert code == 2 and "vocab_size=1 leaves no room past the 5 special tokens" in line


def test_a_vocabulary_smaller_than_the_texts_characters_says_what_it_got():
    with pytest.warns(UserWarning, match=r"vocab_size=8 is below what the text needs.* make 28 ids"):
        tok = bertcore.Tokenizer.train(["hello world, the cat sat on the mat"] * 3, vocab_size=8)
    assert tok.vocab_size == 28            # every character is kept: the request cannot be met, so it is said


# ---- the encoder's own checks --------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    return BertEncoder(bertcore.BertConfig(vocab_size=50, **{**TINY, "max_position_embeddings": 16})).eval()


def test_ids_the_embeddings_cannot_take_are_refused(encoder):
    ids = torch.randint(5, 50, (2, 6))
    # Before: "Expected tensor for argument #1 'indices' to have one of the following scalar types".
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor, got torch.uint8.*\.long\(\)"):
        encoder(ids.to(torch.uint8))
    with pytest.raises(TypeError, match=r"position_ids must be an integer tensor, got torch.float32"):
        encoder(ids, position_ids=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"position_ids has shape \(6,\), input_ids has \(2, 6\)"):
        encoder(ids, position_ids=torch.arange(6))        # before: "shape '[12]' is invalid for input of size 6"
    # Before: "cu_seqlens must be (batch + 1,) offsets" and "step must be nonzero".
    for empty in (torch.zeros(0, 6, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)):
        with pytest.raises(ValueError, match=rf"input_ids of shape \({empty.shape[0]}, {empty.shape[1]}\) holds no tokens"):
            encoder(empty)


def test_an_attention_mask_of_other_values_is_refused(encoder):
    ids = torch.randint(5, 50, (2, 6))
    additive = torch.tensor([[0.0, 0, 0, -1e4, -1e4, -1e4]] * 2)
    # Before: read as bool, so the padding was attended to and the real tokens dropped.
    with pytest.raises(ValueError, match=r"attention_mask must hold 1 \(token\) and 0 \(padding\), got -10000.0"):
        encoder(ids, attention_mask=additive)
    with pytest.raises(ValueError, match="got 2"):
        encoder(ids, attention_mask=torch.full_like(ids, 2))
    out = encoder(ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0]] * 2).bool())
    assert out.last_hidden_state.shape == (2, 6, 32)


def test_positions_past_the_model_are_refused(encoder):
    ids = torch.randint(5, 50, (1, 20))
    left_padded = torch.zeros(1, 20, dtype=torch.long)
    left_padded[0, -5:] = 1
    # Before: IndexError "index out of range in self" (a device-side assert on a GPU).
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 16\) .*got values in \[15, 19\].*right-pad"):
        encoder(ids, attention_mask=left_padded)
    with pytest.raises(ValueError, match=r"a sequence has 20 tokens"):                  # unchanged
        encoder(ids)
    flat = torch.randint(5, 50, (12,))
    cu = torch.tensor([0, 6, 12], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 16\) \(max_position_embeddings\)"):
        encoder(flat, cu_seqlens=cu, max_seqlen=6, position_ids=torch.full_like(flat, 30))
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 16\)"):
        encoder(flat, cu_seqlens=cu, max_seqlen=6, position_ids=torch.full_like(flat, -1))


def test_a_held_out_set_too_small_to_measure_is_said_so(tmp_path, docs, tok, caplog):
    """12 documents hold out 2, a few pairs: NSP accuracy on them is mostly chance, and
    the run said nothing (a user read 0.75 as learning)."""
    with caplog.at_level(logging.WARNING, logger="bertcore.pretraining"):
        pretrain(docs, tok, bertcore.BertConfig(**TINY), targs(tmp_path / "run"))
    warned = [r.getMessage() for r in caplog.records if "held-out sentence pairs" in r.getMessage()]
    assert len(warned) == 1 and "(2 documents)" in warned[0] and "larger eval_fraction" in warned[0], warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertcore.pretraining"):   # the user's own cap: no warning
        pretrain(docs, tok, bertcore.BertConfig(**TINY), targs(tmp_path / "capped"), max_eval_pairs=1)
    assert not [r for r in caplog.records if "held-out sentence pairs" in r.getMessage()]


def test_whole_word_documents_train_their_own_vocabulary(tmp_path, docs):
    """Sentences given as their words (the README's whole-word masking over a segmenter's
    output) with no tokenizer: "texts[0] is list [...], not a str; train takes texts"."""
    words = [[sentence.split() for sentence in doc] for doc in docs]
    model = pretrain(words, None, bertcore.BertConfig(**TINY), targs(tmp_path / "run"), whole_word=True,
                     vocab_size=60)
    pieces = model.tokenizer.convert_ids_to_tokens(model.tokenizer("good movie")["input_ids"][0])
    assert len(pieces) > 3 and "[UNK]" not in pieces                             # a vocabulary of the words


def test_objectives_train_beside_mlm_and_nsp_and_bad_ones_are_refused(tmp_path, docs, tok):
    """pretrain(objectives={"embedding": (head, pairs)}): the pairs' contrastive batches take
    turns with the sentence pairs' and move the encoder; MLM and NSP still evaluate. Names
    pretraining trains already, and values that are no (head, examples), are refused
    before the run folder is touched."""
    cfg = bertcore.BertConfig(**TINY)
    spans = [{"text": " ".join(d)[:20], "text_pair": " ".join(d)[20:40]} for d in docs]
    plain = pretrain(docs, tok, cfg, targs(tmp_path / "plain", max_steps=4, seed=3))
    head = bertcore.create_head("embedding", cfg, pooling="mean")
    both = pretrain(docs, tok, cfg, targs(tmp_path / "both", max_steps=4, seed=3),
                    objectives={"embedding": (head, spans)})
    assert list(both.heads) == ["mlm", "nsp", "embedding"] and {"mlm/accuracy", "nsp/accuracy"} <= set(both.history[-1])
    assert (tmp_path / "both" / "model" / "heads" / "embedding").is_dir()
    plain_weights, both_weights = plain.encoder.state_dict(), both.encoder.state_dict()
    assert any(not torch.equal(plain_weights[k], both_weights[k]) for k in plain_weights)
    for bad, message in (({"mlm": (head, spans)}, r"objectives names 'mlm', which pretraining trains already"),
                         ({"embedding": spans}, r"objectives\['embedding'\] is list; expected \(head, examples\)")):
        with pytest.raises(ValueError, match=message):
            pretrain(docs, tok, cfg, targs(tmp_path / "bad"), objectives=bad)
        assert not (tmp_path / "bad").exists()


def test_a_corpus_holding_the_mask_token_as_text_is_said_so(tmp_path, docs, tok, caplog):
    """A literal [MASK] in the corpus (a scraped NLP paper) made its pair a prediction input:
    MLM masked nothing else in it and learnt nothing from it, silently."""
    cfg = bertcore.BertConfig(**TINY)
    with caplog.at_level(logging.WARNING, logger="bertcore.pretraining"):
        pretrain(docs, tok, cfg, targs(tmp_path / "clean"))
    assert "[MASK]" not in caplog.text
    marked = [["the [MASK] movie", *d[1:]] for d in docs]   # in every document: some are held out
    with caplog.at_level(logging.WARNING, logger="bertcore.pretraining"):
        pretrain(marked, tok, cfg, targs(tmp_path / "marked", seed=1))
    assert "training pairs hold the text [MASK], which MLM reads as a token to predict" in caplog.text
    assert "remove [MASK] from the corpus" in caplog.text
