"""Fault suite, the tokenizer: a tokenizer.json that disagrees with the vocab.txt beside it
or repeats an id, arguments that silently did nothing (max_length below [CLS] [SEP], a str
given to train) or ended in a Rust panic (a stride as long as a window), word lists mixed
with words, and items that failed on a bare TypeError."""
import json
import shutil

import pytest

from bertcore.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LONG = "hello world " * 20


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


def test_a_tokenizer_json_disagreeing_with_its_vocab_txt_is_refused(minilm_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, folder / name)
    assert Tokenizer.from_pretrained(folder).vocab_size == 30522          # the shipped pair agrees
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    lines[2000], lines[2001] = lines[2001], lines[2000]                  # a hand-edited vocab.txt
    (folder / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    for path in (folder, folder / "tokenizer.json"):
        with pytest.raises(ValueError, match=r"tokenizer.json and .*vocab.txt disagree: id 2000 is 'to' in "
                                             r"tokenizer.json but 'was' in vocab.txt .*delete the stale file"):
            Tokenizer.from_pretrained(path)                              # was: loaded tokenizer.json silently
    assert Tokenizer.from_pretrained(folder / "vocab.txt").convert_tokens_to_ids("was") == 2000
    (folder / "vocab.txt").write_text("\n".join(lines[:100]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"id 100 is '\[UNK\]' in tokenizer.json but nothing in vocab.txt"):
        Tokenizer.from_pretrained(folder)


def test_a_tokenizer_json_with_a_repeated_or_missing_id_is_refused_at_load(minilm_dir, tmp_path):
    """Before: it loaded, and the first save failed ("ids are not contiguous")."""
    config = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = config["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 3000)
    vocab[token] = 5000
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json: tokens '\w+' and '\w+' share the WordPiece id 5000"):
        Tokenizer.from_pretrained(tmp_path)
    vocab[token] = 40000
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json: no WordPiece token has the id 3000; ids must run"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("texts, pair", [(LONG, None), (["hello"] * 30, None)], ids=["text", "words"])
def test_a_stride_as_long_as_a_window_is_a_value_error_not_a_rust_panic(tok, texts, pair):
    # was: pyo3_runtime.PanicException (a BaseException, with a Rust backtrace), which no except Exception catches
    with pytest.raises(ValueError, match=r"stride=8 must be below the 8 text tokens a window of max_length=10"):
        tok(texts, max_length=10, stride=8, return_overflowing=True, is_split_into_words=not isinstance(texts, str))
    assert len(tok(LONG, max_length=10, stride=7, return_overflowing=True)["input_ids"]) > 1
    # a text too short to be cut takes any stride, as transformers' BertTokenizerFast does
    assert tok("hi", max_length=10, stride=8)["input_ids"] == [[101, 7632, 102]]
    pair = tok("hi", "there", max_length=12, stride=9, return_overflowing=True)
    assert pair["input_ids"] == [[101, 7632, 102, 2045, 102]]


@pytest.mark.parametrize("truncation", [True, "only_first", "only_second"])
def test_a_stride_longer_than_a_pairs_share_is_a_value_error(tok, truncation):
    first, second = (LONG, LONG) if truncation is True else (LONG, "hi") if truncation == "only_first" else ("hi", LONG)
    with pytest.raises(ValueError, match=r"stride=6.*lower stride or raise max_length"):
        tok(first, second, max_length=10, stride=6, truncation=truncation, return_overflowing=True)
    tok(first, second, max_length=12, stride=1, truncation=truncation, return_overflowing=True)
    assert len(tok("hi", "there", max_length=12, stride=6)["input_ids"][0]) == 5   # nothing to cut: fine


@pytest.mark.parametrize("max_length", [0, 1, 2, True])
def test_a_max_length_leaving_no_room_for_text_is_refused(tok, max_length):
    # was: 0, 1 and True did not truncate at all (7 tokens back); 2 dropped every word without a word
    with pytest.raises(ValueError, match=rf"max_length={max_length!r}"):
        tok("hello world how are you", max_length=max_length)
    assert tok("hello world how are you", max_length=3)["input_ids"] == [[101, 7592, 102]]
    with pytest.raises(ValueError, match=r"max_length=3 leaves no room for text .*max_length > 3"):
        tok("hello", "world", max_length=3)


@pytest.mark.parametrize("key, value", [("max_length", "128"), ("max_length", 12.5), ("max_length", -5),
                                        ("stride", -1), ("stride", "2")])
def test_a_length_that_is_not_a_whole_number_is_named(tok, key, value):
    # was: TypeError "'>' not supported between instances of 'str' and 'int'" / a library message
    with pytest.raises(ValueError, match=rf"^{key}={value!r}; expected a whole number of tokens$"):
        tok("hello world", **{key: value})


def test_numpy_whole_numbers_are_lengths(tok):
    import numpy as np
    want = tok(LONG, max_length=10, stride=2, return_overflowing=True)["input_ids"]
    assert tok(LONG, max_length=np.int64(10), stride=np.int32(2), return_overflowing=True)["input_ids"] == want


def test_words_mixed_with_word_lists_are_refused_not_split_into_characters(tok):
    # was: [["a", "b"], ["c"]]: "ab" read as a word list, one word per character
    with pytest.raises(TypeError, match=r"entry 1 is list \['c'\]"):
        tok(["ab", ["c"]], is_split_into_words=True)
    with pytest.raises(TypeError, match=r"entry 1 is NoneType None"):   # was: 'NoneType' object is not iterable
        tok(["ab", None], is_split_into_words=True)
    with pytest.raises(TypeError, match=r"entry 0 is list \['ab', 3\]"):
        tok([["ab", 3]], is_split_into_words=True)
    assert tok([["ab"], ["c"]], is_split_into_words=True)["input_ids"] == [[101, 11113, 102], [101, 1039, 102]]


def test_train_refuses_a_str_an_empty_corpus_and_items_that_are_not_text():
    with pytest.raises(TypeError, match=r"texts is a str \('corpus.txt'\); pass an iterable of texts"):
        Tokenizer.train("corpus.txt", vocab_size=100)        # was: a vocabulary of the path's letters
    with pytest.raises(ValueError, match=r"no characters to learn a vocabulary from"):
        Tokenizer.train([" ", "\t"], vocab_size=100)          # was: the 5 special tokens, every text [UNK]
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType None, not a str"):
        Tokenizer.train(["a b", None], vocab_size=100)        # was: 'NoneType' object is not iterable
    assert Tokenizer.train(["a b"] * 4, vocab_size=100).vocab_size > 5


def test_a_negative_token_id_is_named(tok):
    with pytest.raises(ValueError, match=r"token id -1 is outside the vocabulary \(size 30522\)"):
        tok.convert_ids_to_tokens(-1)                         # was: OverflowError from the library
