"""BERT's pretraining data, low level: MLM masking and NSP sentence pairs.

    corpus (documents = blocks of lines, blank line between documents)
      └─ read_corpus ─▶ [[sentence, ...], ...]
           └─ make_nsp_pairs ─▶ [{input_ids, token_type_ids, next_sentence_label}, ...]
                └─ mask_tokens (fresh masks every batch, in the MLM head's collate)

This module sits beside `data.py`, under everything that trains: it imports nothing
of bertcore's but `data.read_text`.
"""
import numbers
import os
import random
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import torch

from .data import read_text, text_lines

IGNORE_INDEX = -100  # label of positions a loss skips (torch cross_entropy's default)


# ---- MLM masking -----------------------------------------------------------------

def mask_tokens(input_ids, tok, mlm_probability: float = 0.15, mask_prob: float = 0.8,
                random_prob: float = 0.1, generator: torch.Generator | None = None,
                whole_word: bool = False, word_starts=None):
    """BERT's masked-LM corruption. Returns (masked ids, labels), same shape as input.

    Picks `mlm_probability` of the non-special, non-padding tokens; of those,
    `mask_prob` become [MASK], `random_prob` a random non-special token, the rest
    stay. `labels` holds the original id at picked tokens and -100 elsewhere.
    `input_ids` is a tensor of any shape (padded (B, L) or packed (T,)) or a list of
    id lists (then lists come back). With `whole_word=True`, a word's WordPiece
    continuations (`##...`) are picked together with its first piece; `word_starts`
    (bool, same shape) overrides where words start, e.g. from a word segmenter.
    """
    if not 0.0 <= mlm_probability <= 1.0 or mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
        raise ValueError(f"need 0 <= mlm_probability <= 1 and mask_prob + random_prob <= 1, got "
                         f"{mlm_probability}, {mask_prob}, {random_prob}")
    if isinstance(input_ids, (list, tuple)):
        lengths = [len(x) for x in input_ids]
        if word_starts is not None and [len(x) for x in word_starts] != lengths:
            raise ValueError(f"word_starts must match input_ids sequence by sequence: lengths "
                             f"{[len(x) for x in word_starts][:8]} for input_ids of lengths {lengths[:8]}")
        flat = torch.tensor([t for x in input_ids for t in x], dtype=torch.long)
        starts = None if word_starts is None else torch.tensor([bool(t) for x in word_starts for t in x])
        ids, labels = mask_tokens(flat, tok, mlm_probability, mask_prob, random_prob, generator,
                                  whole_word, starts)
        return [x.tolist() for x in ids.split(lengths)], [x.tolist() for x in labels.split(lengths)]

    if isinstance(input_ids, torch.Tensor) and (input_ids.dtype.is_floating_point or input_ids.dtype.is_complex):
        raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}; convert them: .long()")
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if word_starts is not None and tuple(torch.as_tensor(word_starts).shape) != tuple(input_ids.shape):
        raise ValueError(f"word_starts has shape {tuple(torch.as_tensor(word_starts).shape)}, input_ids has "
                         f"{tuple(input_ids.shape)}; give one flag per token")
    special = tok.special_tokens_mask(input_ids).bool()                       # specials and [PAD]
    draw = torch.rand(input_ids.shape, generator=generator)
    if whole_word:
        if word_starts is None:
            word_starts = _word_starts(input_ids, tok)
        word_starts = torch.as_tensor(word_starts, dtype=torch.bool) | special
        # Every token takes the draw of the first piece of its word: the last start at or before it.
        flat_starts = word_starts.flatten()
        index = torch.arange(flat_starts.numel())
        owner = torch.where(flat_starts, index, torch.zeros_like(index)).cummax(0).values
        draw = draw.flatten()[owner].view(input_ids.shape)
    picked = (draw < mlm_probability) & ~special
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One more uniform draw splits the picked tokens into mask / random / keep.
    how = torch.rand(input_ids.shape, generator=generator)
    to_mask = picked & (how < mask_prob)
    to_random = picked & (how >= mask_prob) & (how < mask_prob + random_prob)
    ids = input_ids.clone()
    ids[to_mask] = tok.mask_token_id
    candidates = _non_special_ids(tok)
    if len(candidates):     # a vocabulary of specials only has none (and no token to pick either)
        choice = torch.randint(len(candidates), input_ids.shape, generator=generator)
        ids[to_random] = candidates[choice][to_random]
    return ids, labels


def _non_special_ids(tok) -> torch.Tensor:
    special = torch.tensor(tok.all_special_ids)
    ids = torch.arange(tok.vocab_size)
    return ids[~torch.isin(ids, special)]


def _word_starts(input_ids: torch.Tensor, tok) -> torch.Tensor:
    """True where a token does not continue the previous word (`##` pieces do)."""
    flat = input_ids.flatten().tolist()
    tokens = tok.convert_ids_to_tokens(flat)
    return torch.tensor([not str(t).startswith("##") for t in tokens]).view(input_ids.shape)


# ---- corpus and NSP pairs -------------------------------------------------------------

def read_corpus(source, encoding: str | None = None) -> list[list[str]]:
    """Documents for pretraining: a list of documents, each a list of sentences.

    `source`: a text file (a path, or a list of paths) in the original BERT format — one
    sentence per line, a blank line between documents; a list of strings (lines,
    "" separating documents); or already a list of lists, returned as is.
    A string without a line break is a file's path; in a list, strings are files only
    when every one names a file (a list that mixes the two is refused: a line that
    happens to be a file's name was read as that file). A line with no visible
    character (only spaces or control characters) separates documents.
    Files are read as UTF-8 unless `encoding` names another.
    """
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, os.PathLike) or "\n" not in source:
            source = [Path(source)]             # a missing file is said, never read as a line of text
        else:
            source = [source]
    if isinstance(source, (bytes, dict)) or not isinstance(source, Iterable):
        raise TypeError(f"a corpus is a file path, a list of lines or a list of documents, got {type(source).__name__}")
    source = list(source)
    if source and all(isinstance(d, (list, tuple)) for d in source):
        return [list(d) for d in source if d]
    for n, item in enumerate(source):
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"corpus entry {n} is of type {type(item).__name__}; entries are file paths, lines, or "
                            "(all of them) documents as lists of sentences")
    named = [isinstance(i, str) and i.strip() and _names_file(i) for i in source]
    texts = [i for i, f in zip(source, named) if isinstance(i, str) and i.strip() and not f]
    if any(named) and texts:
        raise ValueError(f"the corpus list mixes file paths ({next(i for i, f in zip(source, named) if f)!r}) with "
                         f"lines of text ({texts[0][:40]!r}); pass files as pathlib.Path (or only files), "
                         "or documents as lists of sentences")
    lines: list[str] = []
    for item, is_file in zip(source, named):
        if isinstance(item, os.PathLike) or is_file:
            lines.extend(text_lines(read_text(Path(item), encoding, what="corpus file")))
            lines.append("")
        else:
            lines.extend(text_lines(item))
    documents, current = [], []
    for line in lines:
        line = line.strip()
        if line and not _invisible(line):
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def _names_file(text: str) -> bool:
    return len(text) < 4096 and "\n" not in text and Path(text).is_file()


def _invisible(line: str) -> bool:
    """No character the tokenizer keeps: spaces, control and format characters only
    (NUL, a zero-width space, a stray BOM). Such a line is blank, a document boundary."""
    return all(unicodedata.category(c)[0] == "Z" or unicodedata.category(c) in ("Cc", "Cf") for c in line)


def make_nsp_pairs(documents, tok, max_length: int = 128, nsp_probability: float = 0.5,
                   seed: int = 0, short_seq_prob: float = 0.1) -> list[dict]:
    """Sentence-pair examples for MLM + NSP, as the original BERT builds them.

    Consecutive sentences of a document are packed until they fill `max_length`
    (minus [CLS], [SEP], [SEP]); the chunk is cut at a random sentence boundary
    into A and B. With probability `nsp_probability` B is replaced by text from a
    random *other* document (NotNext, label 1), else it is the true continuation
    (IsNext, label 0). A chunk of a single sentence is cut inside the sentence. A
    sentence longer than a pair's room is first cut into pieces of half of it: truncated,
    as BERT's script does, it lost the rest (half of the demo's text).
    `short_seq_prob` of chunks aim at a shorter random length, as BERT does, so the
    model also sees short inputs.

    A sentence may be given as its words (a list of strings, e.g. a Chinese word
    segmenter's output) instead of a string: then every pair also gets `word_starts`
    (True where a token begins a word), which the MLM head's whole-word masking reads,
    as Chinese BERT-wwm masks whole words of characters.

    Returns dicts with `input_ids`, `token_type_ids`, `next_sentence_label`, and
    `document`/`partner_document` (where A and B came from).
    """
    _check_nsp_args(documents, max_length, nsp_probability, short_seq_prob)
    documents = [d for d in documents if d]
    if len(documents) < 2:
        raise ValueError(f"NSP needs at least 2 documents (NotNext takes B from another one), got "
                         f"{len(documents)}; separate documents by blank lines")
    rng = random.Random(seed)
    sentences = [s for d in documents for s in d]
    segmented = not all(isinstance(s, str) for s in sentences)
    encoded = iter(_encode_sentences(sentences, tok, segmented))
    docs = [[ids for ids in (next(encoded) for _ in d) if ids] for d in documents]
    source = [n for n, d in enumerate(documents) if d]     # each kept document's index among the given ones
    source = [n for n, d in zip(source, docs) if d]
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise ValueError("NSP needs at least 2 documents with some text in them")
    budget = max_length - 3
    docs = [[piece for ids in doc for piece in _pieces(ids, budget)] for doc in docs]
    cls, sep = tok.cls_token_id, tok.sep_token_id

    pairs = []
    for d, doc in enumerate(docs):
        i = 0
        while i < len(doc):
            target = rng.randint(2, budget) if rng.random() < short_seq_prob else budget
            chunk, size = [], 0
            while i < len(doc) and (not chunk or size < target):
                chunk.append(doc[i])
                size += len(doc[i])
                i += 1
            not_next = rng.random() < nsp_probability
            if len(chunk) == 1:  # one sentence: cut inside it
                ids = chunk[0]
                if len(ids) < 2:
                    continue
                cut = rng.randint(1, len(ids) - 1)
                a, b_true, a_end = ids[:cut], ids[cut:], 1
            else:
                a_end = rng.randint(1, len(chunk) - 1)
                a = [t for s in chunk[:a_end] for t in s]
                b_true = [t for s in chunk[a_end:] for t in s]
            partner = d
            if not_next:
                partner = rng.randrange(len(docs) - 1)
                partner += partner >= d                                        # never this document
                other = docs[partner]
                start = rng.randrange(len(other))
                b = []
                for s in other[start:]:
                    b.extend(s)
                    if len(b) >= budget - len(a):
                        break
                if len(chunk) > 1:  # the unused true continuation goes back for the next chunk
                    i -= len(chunk) - a_end
            else:
                b = b_true
            a, b = _truncate_pair(a, b, budget, rng)
            pairs.append({**_pair_tokens(a, b, cls, sep, segmented), "next_sentence_label": int(not_next),
                          "document": source[d], "partner_document": source[partner]})
    return pairs


def _check_nsp_args(documents, max_length, nsp_probability, short_seq_prob) -> None:
    """ValueError/TypeError for settings or documents make_nsp_pairs cannot use as given."""
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise TypeError(f"max_length must be a whole number, got {max_length!r}")
    if max_length < 8:
        raise ValueError(f"max_length={max_length} is too short for a sentence pair; use >= 8")
    for name, value in (("nsp_probability", nsp_probability), ("short_seq_prob", short_seq_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if isinstance(documents, (str, bytes)):
        raise TypeError("documents must be a list of documents, each a list of sentences, got a string; "
                        "read a corpus file with read_corpus")
    for n, doc in enumerate(documents):
        if isinstance(doc, (str, bytes)) or not isinstance(doc, (list, tuple)):
            raise TypeError(f"document {n} is a {type(doc).__name__}, not a list of sentences; wrap it: "
                            "[sentence, ...] (read_corpus builds documents from lines)")
        for k, sentence in enumerate(doc):
            if not isinstance(sentence, str) and not (isinstance(sentence, (list, tuple))
                                                      and all(isinstance(w, str) for w in sentence)):
                raise TypeError(f"document {n}, sentence {k} is {sentence!r:.60}; a sentence is a string or a "
                                "list of its words (strings)")


def _pieces(ids: list, budget: int) -> list[list]:
    """`ids` whole if it fits in `budget`, else cut into pieces of half of it (rounded
    up), so that two pieces fill a pair."""
    if len(ids) <= budget:
        return [ids]
    size = -(-budget // 2)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _pair_tokens(a: list, b: list, cls: int, sep: int, segmented: bool) -> dict:
    """`[CLS] a [SEP] b [SEP]` as input_ids and token_type_ids; for segmented text, whose
    tokens are (id, starts a word) pairs, also word_starts (each side's first token starts
    a word, whether or not truncation cut into it)."""
    out = {}
    if segmented:
        out["word_starts"] = [True, *[k == 0 or x for k, (_, x) in enumerate(a)], True,
                              *[k == 0 or x for k, (_, x) in enumerate(b)], True]
        a, b = [i for i, _ in a], [i for i, _ in b]
    return {"input_ids": [cls, *a, sep, *b, sep], "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1), **out}


def _encode_sentences(sentences: list, tok, segmented: bool) -> list[list]:
    """Each sentence's token ids; with `segmented`, (id, starts a word) pairs instead, which
    the packing in make_nsp_pairs moves as it moves ids. A sentence given as words keeps
    its words; one given as a string gets BERT's pre-tokenizer words (each Chinese
    character one word)."""
    if not segmented:
        return [e.ids for e in tok.backend.encode_batch(sentences, add_special_tokens=False)]
    strings = [i for i, s in enumerate(sentences) if isinstance(s, str)]
    lists = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    encodings = dict(zip(strings, tok.backend.encode_batch([sentences[i] for i in strings], add_special_tokens=False)))
    encodings.update(zip(lists, tok.backend.encode_batch([[str(w) for w in sentences[i]] for i in lists],
                                                         is_pretokenized=True, add_special_tokens=False)))
    out = []
    for n in range(len(sentences)):
        e = encodings[n]
        out.append([(i, k == 0 or w != e.word_ids[k - 1]) for k, (i, w) in enumerate(zip(e.ids, e.word_ids))])
    return out


def _truncate_pair(a: list, b: list, budget: int, rng: random.Random):
    """Trim the longer side, from its front or back at random (BERT's choice), until
    both fit; each side keeps at least one token."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        if len(longer) <= 1:
            break
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return a, b
