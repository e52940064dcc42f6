"""BERT's WordPiece tokenizer: a thin wrapper over Hugging Face `tokenizers`.

The Rust library does all the work (normalising, splitting, WordPiece, special
tokens, truncation windows, padding, offsets). This module builds BERT's pipeline,
loads and saves it in the files `transformers.BertTokenizerFast` reads, and returns
batches shaped the way the encoder and the task heads want them.

    tok = Tokenizer.from_pretrained("path/to/model")   # dir, tokenizer.json or vocab.txt
    batch = tok(["a sentence", "another"], padding=True, return_tensors="pt")
    batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    batch.word_ids(0), batch.sequence_ids(0)           # per token, for NER / QA
"""
from __future__ import annotations

import json
import numbers
import os
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Iterable

from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend
from tokenizers.models import WordPiece

from .files import write_text

MAX_POSITIONS = 512  # BERT has 512 learned position embeddings; no sequence may be longer.

# Attribute name -> token. In a trained vocabulary they take ids 0..4 in this order.
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}

_TRUNCATION = {True: "longest_first", "longest_first": "longest_first",
               "only_first": "only_first", "only_second": "only_second",
               False: None, "do_not_truncate": None}
_PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest",
            "max_length": "max_length"}


class Batch(dict):
    """Encoded batch: a dict of lists (or tensors) plus per-token word and sequence ids.

    Keys: ``input_ids``, ``token_type_ids``, ``attention_mask``; ``offset_mapping``
    when asked for (``(start, end)`` character spans, ``(0, 0)`` for special tokens);
    ``overflow_to_sample_mapping`` with ``return_overflowing`` (row -> input index).
    Rows are one per input, or one per window with ``return_overflowing``.
    """

    def __init__(self, data: dict, word_ids: list, sequence_ids: list):
        super().__init__(data)
        self._word_ids = word_ids
        self._sequence_ids = sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Index of the word (pre-tokenizer split, or input word with
        ``is_split_into_words``) each token of row ``batch_index`` comes from;
        None for special and padding tokens. Words are counted per sequence."""
        return list(self._word_ids[batch_index])

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """0 for tokens of the first text, 1 for the pair text, None for special and
        padding tokens, per token of row ``batch_index``."""
        return list(self._sequence_ids[batch_index])

    def to(self, device) -> "Batch":
        """A copy with every tensor moved to ``device`` (after ``return_tensors="pt"``)."""
        moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()}
        return Batch(moved, self._word_ids, self._sequence_ids)

    def __getattr__(self, name: str):
        # batch.input_ids, as with transformers' BatchEncoding.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Tokenizer:
    """BERT WordPiece tokenizer (``[CLS] A [SEP] B [SEP]``, segment ids 0 / 1).

    Build one with :meth:`from_pretrained` or :meth:`train`; encode with ``tok(...)``.
    """

    def __init__(self, backend: _Backend, source: str = "<in memory>"):
        """Wrap a ``tokenizers.Tokenizer`` that has a WordPiece model with BERT's five
        special tokens. ``source`` only names it in error messages."""
        if not isinstance(backend.model, WordPiece):
            raise ValueError(f"{source}: expected a WordPiece model, found "
                             f"{type(backend.model).__name__}; bertcore only tokenizes for BERT")
        missing = [t for t in SPECIAL_TOKENS.values() if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"{source}: the vocabulary lacks {', '.join(missing)}; BERT needs "
                             f"{', '.join(SPECIAL_TOKENS.values())} in it")
        # Specials must be matched whole in raw text ("a [MASK] b") and skipped by decode;
        # that is what registering them as special added tokens does.
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t in SPECIAL_TOKENS.values() if t not in known])
        if backend.post_processor is None:
            backend.post_processor = _template(backend)
        # Truncation and padding are set per call; a file's baked-in settings
        # (MiniLM's tokenizer.json pads everything to 128) must not leak into calls.
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        for attr, token in SPECIAL_TOKENS.items():
            setattr(self, f"{attr}_id", backend.token_to_id(token))

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, do_lower_case: bool | None = None,
                        strip_accents: bool | None = None,
                        tokenize_chinese_chars: bool | None = None) -> "Tokenizer":
        """Load from a directory holding tokenizer.json or vocab.txt, or from either file;
        a saved TaskModel's folder loads its `tokenizer/`.

        ``tokenizer_config.json`` next to it supplies ``do_lower_case``,
        ``strip_accents`` and ``tokenize_chinese_chars`` (as transformers reads them);
        the keyword arguments override it. tokenizer.json wins over vocab.txt.
        """
        path = Path(path)
        if not path.exists() and str(path).count("/") == 1:  # "org/name": the local Hugging Face cache
            from .checkpoint import resolve_pretrained
            path = resolve_pretrained(str(path))
        if path.is_dir() and tokenizer_file(path) is None and tokenizer_file(path / "tokenizer"):
            path = path / "tokenizer"   # a saved TaskModel's folder: its own tokenizer, as transformers' model dirs
        elif path.is_dir() and tokenizer_file(path) is None:
            from .checkpoint import bert_folder
            path = bert_folder(path)    # a sentence-transformers folder keeping its BERT in 0_Transformer/
        if path.is_dir():
            folder = path
            file = tokenizer_file(path)
            if file is None:
                beside = path.parent / "tokenizer"
                hint = (f"; the model's tokenizer is saved beside this encoder: {beside}"
                        if (path.parent / "taskmodel.json").is_file() and tokenizer_file(beside) else "")
                raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.txt; expected a "
                                        "BERT tokenizer folder (tokenizer.json, or vocab.txt with one "
                                        f"WordPiece token per line){hint}")
        elif path.is_file():
            folder, file = path.parent, path
        else:
            raise FileNotFoundError(f"no tokenizer at {path}: expected a directory with tokenizer.json "
                                    "or vocab.txt, or the path of one of those files")

        config = {}
        if (folder / "tokenizer_config.json").is_file():
            try:
                config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{folder / 'tokenizer_config.json'}: not valid JSON ({err}); fix or delete "
                                 "the file") from None
            if not isinstance(config, dict):
                raise ValueError(f"{folder / 'tokenizer_config.json'}: expected a JSON object")
            for key, allowed in (("do_lower_case", (bool,)), ("strip_accents", (bool, type(None))),
                                 ("tokenize_chinese_chars", (bool,))):
                if key in config and not isinstance(config[key], allowed):
                    raise ValueError(f"{folder / 'tokenizer_config.json'}: {key} is {json.dumps(config[key])}; "
                                     f"expected true or false{' or null' if type(None) in allowed else ''}")
        given = {"do_lower_case": do_lower_case, "strip_accents": strip_accents,
                 "tokenize_chinese_chars": tokenize_chinese_chars}
        config.update({k: v for k, v in given.items() if v is not None})

        if file.suffix == ".json":
            try:
                backend = _Backend.from_file(str(file))
            except Exception as err:  # the tokenizers library raises a bare Exception
                raise ValueError(f"{file}: not a tokenizer the `tokenizers` library can read "
                                 f"({' '.join(str(err).split())[:200]}); the file is damaged, or delete it "
                                 "to fall back on vocab.txt") from None
            # transformers builds BERT's normalizer from tokenizer_config.json, not from
            # tokenizer.json, so the config decides when it speaks.
            if any(k in config for k in given):
                backend.normalizer = _normalizer(config)
            if isinstance(backend.model, WordPiece):  # else __init__ names the model
                _check_json_vocab(file, backend, folder / "vocab.txt")
        else:
            vocab = _read_vocab(file)
            for token in SPECIAL_TOKENS.values():
                if token not in vocab:
                    raise ValueError(f"{file} lacks the special token {token}; a BERT vocabulary needs "
                                     f"{', '.join(SPECIAL_TOKENS.values())}")
            backend = _Backend(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                         max_input_chars_per_word=100))
            backend.normalizer = _normalizer(config)
            backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            backend.decoder = decoders.WordPiece(prefix="##")
        return cls(backend, source=str(file))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True,
              min_frequency: int = 2) -> "Tokenizer":
        """Train a WordPiece vocabulary on an iterator of texts with BERT's pipeline.

        [PAD], [UNK], [CLS], [SEP], [MASK] get ids 0..4. Chinese characters are split
        one per word before training, so Chinese gets a character-level vocabulary.

        The vocabulary can differ between processes on the same texts: `tokenizers`
        breaks ties between equally frequent merges in hash-map order
        (huggingface/tokenizers#1794). Save the trained tokenizer and load it, rather
        than training it again, wherever ids must match.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={vocab_size!r} leaves no room past the {len(SPECIAL_TOKENS)} special tokens; "
                             "ask for thousands (BERT's English vocabulary has 30522)")
        backend = _Backend(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
        backend.normalizer = _normalizer({"do_lower_case": lowercase})
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS.values()),
                                            continuing_subword_prefix="##", show_progress=False)
        if isinstance(texts, (str, bytes)):  # one str iterates as characters: a path would train on its letters
            raise TypeError(f"texts is a {type(texts).__name__} ({str(texts)[:40]!r}); pass an iterable of texts, "
                            "e.g. a list of str or an open text file")
        backend.train_from_iterator(_checked_texts(texts), trainer=trainer)
        if backend.get_vocab_size() <= len(SPECIAL_TOKENS):  # every text would be [UNK]
            raise ValueError("the texts hold no characters to learn a vocabulary from (none, or only whitespace "
                             "and control characters); pass the training corpus")
        if backend.get_vocab_size() > vocab_size:  # WordPiece keeps every character of the text, whatever was asked
            warnings.warn(f"vocab_size={vocab_size} is below what the text needs: the special tokens and each of its "
                          f"characters make {backend.get_vocab_size()} ids, the size of the trained vocabulary",
                          stacklevel=2)
        backend.post_processor = _template(backend)
        return cls(backend, source="trained tokenizer")

    def save_pretrained(self, directory: str | os.PathLike, model_max_length: int = MAX_POSITIONS) -> Path:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json
        (each atomically) so that ``transformers.BertTokenizerFast.from_pretrained``
        and :meth:`from_pretrained` load it with identical ids. `model_max_length`: the
        positions of the encoder it goes with (transformers' pipelines cut texts there).
        Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self._backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] != list(range(len(vocab))):
            raise ValueError("WordPiece ids are not contiguous from 0; vocab.txt cannot represent them")
        norm = self._backend.normalizer
        bert_norm = isinstance(norm, normalizers.BertNormalizer)
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": norm.lowercase if bert_norm else False,
            "strip_accents": norm.strip_accents if bert_norm else None,
            "tokenize_chinese_chars": norm.handle_chinese_chars if bert_norm else False,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": True,
            **SPECIAL_TOKENS,
        }
        write_text(directory / "tokenizer.json", self._backend.to_str(pretty=True))
        write_text(directory / "vocab.txt", "".join(f"{t}\n" for t, _ in vocab))
        write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        write_text(directory / "special_tokens_map.json", json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
        return directory

    # ----------------------------------------------------------------- encoding

    def __call__(self, texts, text_pair=None, max_length: int | None = MAX_POSITIONS,
                 truncation: bool | str = True, padding: bool | str = False,
                 return_offsets: bool = False, stride: int = 0, return_overflowing: bool = False,
                 return_tensors: str | None = None, is_split_into_words: bool = False,
                 add_special_tokens: bool = True) -> Batch:
        """Encode a text (str) or a batch (list of str; list of word lists when
        ``is_split_into_words``), optionally paired with ``text_pair`` of the same shape.

        - ``max_length``: at most 512 tokens including [CLS]/[SEP]; None means 512.
        - ``truncation``: True / "longest_first", "only_first", "only_second", or False.
        - ``padding``: False, True / "longest" (to the longest row), "max_length".
        - ``return_offsets``: add ``offset_mapping``.
        - ``return_overflowing``: keep the truncated-off rest as extra rows (windows
          that overlap by ``stride`` tokens) and add ``overflow_to_sample_mapping``.
        - ``return_tensors="pt"``: torch.long tensors; ``"np"``: int64 arrays (what
          onnxruntime takes); rows must be of equal length.
        - ``add_special_tokens=False``: no [CLS]/[SEP] (the text's tokens alone).

        A single str still gives batch-of-one lists. Per-token word and sequence
        ids come from ``batch.word_ids(i)`` / ``batch.sequence_ids(i)``.
        """
        if not isinstance(add_special_tokens, bool):
            raise ValueError(f"add_special_tokens={add_special_tokens!r}; expected True or False")
        specials = (2 if text_pair is None else 3) if add_special_tokens else 0   # [CLS] A [SEP] (B [SEP])
        max_length, stride, strategy, pad = _encode_options(max_length, stride, truncation, padding,
                                                            return_tensors, specials)
        first = _as_batch(texts, is_split_into_words, "texts")
        inputs: list = first
        if text_pair is not None:
            second = _as_batch(text_pair, is_split_into_words, "text_pair")
            if len(second) != len(first):
                raise ValueError(f"texts has {len(first)} entries but text_pair has {len(second)}")
            inputs = list(zip(first, second))
        elif strategy == "only_second":
            raise ValueError("truncation='only_second' needs text_pair; use True or 'only_first'")
        room = max_length - specials   # the text tokens a window holds
        # The library panics (a Rust backtrace) when it cuts a text with a stride this long; a text of
        # no more characters than `room` is never cut, and transformers takes the stride with it.
        if strategy and stride >= room and any(_characters(x) > room for x in inputs):
            raise ValueError(f"stride={stride} must be below the {room} text tokens a window of "
                             f"max_length={max_length} holds; lower stride or raise max_length")

        encodings = self._encode_batch(inputs, max_length, stride, strategy, pad, truncation,
                                       is_split_into_words=is_split_into_words, add_special_tokens=add_special_tokens)
        rows, sample = [], []  # one row per window, as transformers flattens overflow
        for i, enc in enumerate(encodings):
            for window in ([enc, *enc.overflowing] if return_overflowing else [enc]):
                rows.append(window)
                sample.append(i)
        if not strategy and any(len(r.ids) > MAX_POSITIONS for r in rows):
            warnings.warn(f"a sequence is longer than BERT's {MAX_POSITIONS} positions and "
                          "truncation=False; the encoder will reject it", stacklevel=2)

        data: dict[str, Any] = {
            "input_ids": [r.ids for r in rows],
            "token_type_ids": [r.type_ids for r in rows],
            "attention_mask": [r.attention_mask for r in rows],
        }
        if return_offsets:
            data["offset_mapping"] = [r.offsets for r in rows]
        if return_overflowing:
            data["overflow_to_sample_mapping"] = sample
        if return_tensors is not None:
            data = _to_tensors(data, return_tensors)
        return Batch(data, [r.word_ids for r in rows], [r.sequence_ids for r in rows])

    def _encode_batch(self, inputs, max_length, stride, strategy, pad, truncation, *, is_split_into_words: bool,
                      add_special_tokens: bool) -> list:
        """The library's encodings of `inputs`, its truncation and padding set for this call only."""
        backend = self._backend
        try:  # the library keeps truncation/padding as tokenizer state; undo it afterwards
            if strategy:
                backend.enable_truncation(max_length, stride=stride, strategy=strategy)
            if pad:
                backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token,
                                       length=max_length if pad == "max_length" else None)
            return backend.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                        add_special_tokens=add_special_tokens)
        except Exception as e:  # tokenizers raises bare Exceptions for bad truncation settings
            raise ValueError(f"cannot encode with max_length={max_length}, stride={stride}, "
                             f"truncation={truncation!r}: {e}") from e
        except BaseException as e:
            # a pair truncated in shares can leave a sequence's share at or below `stride`, and
            # the library panics (pyo3's PanicException is no Exception) instead of raising
            if type(e).__name__ != "PanicException":
                raise
            raise ValueError(f"cannot encode with max_length={max_length}, stride={stride}, "
                             f"truncation={truncation!r}: a window's share of a sequence is not longer than "
                             "stride; lower stride or raise max_length") from None
        finally:
            backend.no_truncation()
            backend.no_padding()

    # ----------------------------------------------------------------- decoding

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids (list or 1-D tensor) back to text; specials and padding dropped by default."""
        return self._backend.decode(_int_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` for each row of a list of lists or a 2-D tensor."""
        return self._backend.decode_batch([_int_list(s) for s in sequences],
                                          skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids):
        """One id -> its token; a list of ids -> a list of tokens."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # tensors, numpy
        if isinstance(ids, int):
            token = self._backend.id_to_token(ids) if ids >= 0 else None  # -1 overflowed in the library
            if token is None:
                raise ValueError(f"token id {ids} is outside the vocabulary (size {len(self)})")
            return token
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        """One token -> its id; a list -> a list. Unknown tokens give ``unk_token_id``."""
        if isinstance(tokens, str):
            token_id = self._backend.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # ------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding matrix needs this many rows)."""
        return len(self)

    @property
    def vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included (a fresh dict)."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def backend(self) -> _Backend:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._backend

    pad_token, unk_token, cls_token, sep_token, mask_token = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of [PAD], [UNK], [CLS], [SEP], [MASK] (in that order)."""
        return [getattr(self, f"{attr}_id") for attr in SPECIAL_TOKENS]

    def special_tokens_mask(self, ids):
        """1 where an id is a special token (padding included), else 0.

        Takes a list of ids or a list of lists (gives the same shape of 0/1 ints), or
        a tensor (gives a bool tensor of the same shape). MLM masking uses it so that
        [CLS], [SEP] and [PAD] are never picked.
        """
        if hasattr(ids, "dim"):  # a torch tensor
            import torch
            return torch.isin(ids, torch.tensor(self.all_special_ids, device=ids.device))
        special = set(self.all_special_ids)
        return [self.special_tokens_mask(x) if isinstance(x, (list, tuple)) else int(x in special)
                for x in ids]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self)})"


# ---------------------------------------------------------------------- helpers

def tokenizer_file(folder: Path) -> Path | None:
    """The folder's tokenizer.json, else its vocab.txt, else None (tokenizer.json wins)."""
    return next((folder / n for n in ("tokenizer.json", "vocab.txt") if (folder / n).is_file()), None)


def _read_vocab(file: Path) -> dict[str, int]:
    """vocab.txt as transformers' load_vocab reads it (line number = id), refusing what
    would break the ids later: bytes that are not UTF-8, and a token on two lines (the
    second would leave a gap in the ids, which no save can write back). A byte order mark
    (Windows editors add one) is dropped: read as part of line 1, it would hide [PAD]."""
    try:
        lines = file.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 (byte {err.object[err.start]:#04x} at {err.start}); re-save it "
                         "as UTF-8") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {}
    for i, token in enumerate(lines):
        if token in vocab:
            raise ValueError(f"{file}:{i + 1}: token {token!r} repeats line {vocab[token] + 1}; each token "
                             "must appear once (remove the duplicate)")
        vocab[token] = i
    return vocab


def _check_json_vocab(file: Path, backend: _Backend, vocab_txt: Path) -> None:
    """tokenizer.json's WordPiece ids must be 0..n-1, each once (a repeated or missing id
    loads, then fails at the first save), and agree with a vocab.txt beside it: tools that
    read vocab.txt (BertTokenizer of transformers 4, TF/JAX BERT) would give other ids."""
    by_id: dict[int, str] = {}
    for token, i in sorted(backend.get_vocab(with_added_tokens=False).items(), key=lambda kv: (kv[1], kv[0])):
        if i in by_id:
            raise ValueError(f"{file}: tokens {by_id[i]!r} and {token!r} share the WordPiece id {i}; the "
                             "file is damaged (each id must name one token)")
        by_id[i] = token
    gap = next((i for i in range(len(by_id)) if i not in by_id), None)
    if gap is not None:
        raise ValueError(f"{file}: no WordPiece token has the id {gap}; ids must run 0..{len(by_id) - 1} "
                         "without gaps (the file is damaged)")
    if not vocab_txt.is_file():
        return
    listed = list(_read_vocab(vocab_txt))
    if listed != [by_id[i] for i in range(len(by_id))]:
        i = next((i for i, (a, b) in enumerate(zip(listed, by_id.values())) if a != b), min(len(listed), len(by_id)))
        shown = [repr(v[i]) if i < len(v) else "nothing" for v in (listed, by_id)]
        raise ValueError(f"{file} and {vocab_txt} disagree: id {i} is {shown[1]} in {file.name} but {shown[0]} "
                         f"in vocab.txt ({len(by_id)} vs {len(listed)} tokens); delete the stale file, or "
                         "re-save the tokenizer")


def _normalizer(config: dict) -> normalizers.BertNormalizer:
    """BERT's normalizer from tokenizer_config.json values, with transformers' defaults."""
    return normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),  # None: strip when lowercasing, like BERT
        lowercase=config.get("do_lower_case", True),
    )


def _template(backend: _Backend) -> processors.TemplateProcessing:
    """[CLS] A [SEP] (segment 0) and [CLS] A [SEP] B [SEP] (B [SEP] is segment 1)."""
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _encode_options(max_length, stride, truncation, padding, return_tensors, specials: int):
    """Tokenizer.__call__'s options checked: (max_length, stride, truncation strategy, padding strategy)."""
    if max_length is None:
        max_length = MAX_POSITIONS
    for key, value in (("max_length", max_length), ("stride", stride)):  # "128", 12.5, True: no length
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{key}={value!r}; expected a whole number of tokens")
    max_length, stride = int(max_length), int(stride)  # numpy ints to the library's usize
    if max_length > MAX_POSITIONS:
        raise ValueError(f"max_length={max_length} exceeds BERT's limit of {MAX_POSITIONS} "
                         f"positions; use max_length <= {MAX_POSITIONS} (with a stride for long texts)")
    if truncation not in _TRUNCATION:
        raise ValueError(f"truncation={truncation!r}; expected one of {list(_TRUNCATION)}")
    if padding not in _PADDING:
        raise ValueError(f"padding={padding!r}; expected one of {list(_PADDING)}")
    if return_tensors not in (None, "pt", "np"):
        raise ValueError(f"return_tensors={return_tensors!r}: only None (lists), 'pt' and 'np' are supported")
    strategy, pad = _TRUNCATION[truncation], _PADDING[padding]

    if strategy and max_length <= specials:  # the library ignores a max_length below this: nothing is cut
        raise ValueError(f"max_length={max_length} leaves no room for text{' after [CLS] and [SEP]' * bool(specials)}; "
                         f"use max_length > {specials}")
    return max_length, stride, strategy, pad


def _characters(item) -> int:
    """Characters of a text, a word list or a pair of them: a bound on its tokens (each
    token holds at least one character; [CLS]/[SEP] aside)."""
    if isinstance(item, str):
        return len(item)
    return sum(_characters(x) for x in item)


def _as_batch(x, split: bool, name: str) -> list:
    """Normalise one input (str, or a word list when split) to a batch of inputs."""
    if split:
        if isinstance(x, str) or not isinstance(x, (list, tuple)):
            raise TypeError(f"{name} with is_split_into_words=True must be a list of words "
                            f"or a list of word lists, got {type(x).__name__}")
        if x and all(isinstance(w, str) for w in x):
            return [list(x)]
        # ["ab", ["c"]] would split "ab" into characters, as words; ["ab", None] fail on a bare TypeError
        words_list = any(isinstance(w, str) for w in x)
        for i, words in enumerate(x):
            ok = isinstance(words, str) if words_list else \
                isinstance(words, (list, tuple)) and all(isinstance(w, str) for w in words)
            if not ok:
                raise TypeError(f"{name} with is_split_into_words=True must be a list of words (str) or a list of "
                                f"word lists; entry {i} is {type(words).__name__} {repr(words)[:40]}")
        return [list(words) for words in x]
    if isinstance(x, str):
        return [x]
    if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
        return list(x)
    if isinstance(x, (list, tuple)) and any(isinstance(t, str) for t in x):   # a None among texts: name it
        i = next(i for i, t in enumerate(x) if not isinstance(t, str))
        raise TypeError(f"{name} must be a list of str; entry {i} is {type(x[i]).__name__} {repr(x[i])[:40]}")
    raise TypeError(f"{name} must be a str or a list of str (pass is_split_into_words=True for "
                    f"lists of words), got {type(x).__name__}")


def _checked_texts(texts: Iterable) -> Iterable[str]:
    """`texts`, refusing an item that is not a str by its index (the library fails on it
    with a bare "'NoneType' object is not iterable")."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} {repr(text)[:40]}, not a str; train takes texts")
        yield text


def _int_list(ids) -> list[int]:
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def _to_tensors(data: dict, kind: str) -> dict:
    """torch.long tensors ("pt") or int64 numpy arrays ("np")."""
    import numpy as np
    import torch

    out = {}
    for key, value in data.items():
        if key != "overflow_to_sample_mapping" and len({len(row) for row in value}) > 1:
            raise ValueError(f"return_tensors={kind!r} needs rows of equal length, but {key} rows "
                             "differ; pass padding=True (or 'max_length')")
        out[key] = torch.tensor(value, dtype=torch.long) if kind == "pt" else np.asarray(value, dtype=np.int64)
    return out


def end_past_marks(text: str, end: int) -> int:
    """A character offset `end` into `text` moved past the combining marks that follow it:
    an uncased tokenizer strips the accents of NFD text, so a word's last offsets stop
    before them, and `text[start:end]` would lose its last accent."""
    while end < len(text) and unicodedata.category(text[end]) == "Mn":
        end += 1
    return end
