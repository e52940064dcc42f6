"""Token classification (NER) head for bertcore: a linear layer on every token.

Input is pre-split words ({"tokens": [...], "tags": [...]}) or raw text
({"text": str}, split into words by BERT's pre-tokenizer). The label of a word sits
on its first sub-word and the other sub-words get -100 (ignored), or, with
`label_all_subwords=True`, they get the word's label too (B-X becoming I-X).
Decoding reads each word's first sub-word, turns the word tags (BIO or BIOES) into
entity spans, and maps them to character offsets: into `text`, or into
`" ".join(tokens)` for word input. A sentence longer than `max_length` tokens, tagged or
not, is read in overlapping windows; each word's tag is learnt and read in one of them.

`TaskModel.predict` takes a str (raw text), a tuple of words, or either dict; a
list is a batch of those. Prediction: {"entities": [{"label", "text", "start", "end", "score"}], "tags": [...]}.
Metrics: entity-level micro precision / recall / f1 (seqeval, default mode).
"""
import itertools
import unicodedata

import torch.nn as nn
import torch.nn.functional as F

from bertcore import Head, hookimpl
from bertcore.heads import IGNORE_INDEX, dropout_probability, transformers_labels
from bertcore.tokenizer import end_past_marks

BERTCORE_REQUIRES = ">=0.1,<0.2"



class NERHead(Head):
    name = "ner"
    description = "token classification (NER): BIO/BIOES tags, entity spans with character offsets"
    main_metric = "f1"
    greater_is_better = True
    required_keys = ("tokens", "tags")
    token_labels = True

    def __init__(self, config, labels=None, label_all_subwords=False, dropout=None):
        super().__init__(config)
        if not labels:
            raise ValueError('the ner head needs labels=["O", "B-PER", "I-PER", ...] (every tag it may predict)')
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):  # "OB-PER" is not 6 tags
            raise ValueError(f"labels={labels!r}; expected a list of tag names")
        labels = list(labels)
        for i, label in enumerate(labels):   # str(None) would be a tag no data ever has
            if not isinstance(label, str):
                raise ValueError(f"labels: label {i + 1} of {len(labels)} is "
                                 f"{'None' if label is None else f'{type(label).__name__} {label!r}'}, not a tag name")
        self.labels = labels
        for i, label in enumerate(self.labels):   # a repeat would make a class no tag ever trains
            if self.labels.index(label) != i:
                raise ValueError(f"labels: {label!r} is given twice; name each tag once")
        if "O" not in self.labels:
            raise ValueError(f"labels {self.labels} lack the outside tag 'O'")
        if len(self.labels) == 1:   # a tagger that can only say O finds nothing
            raise ValueError("labels ['O'] name no entity type; give B-TYPE, I-TYPE tags too (training data "
                             "without an entity?)")
        for label in self.labels:   # the data's tags are held to this too; a head built with others decoded nothing
            if not _well_formed(label):
                raise ValueError(f"labels: tag {label!r} is not BIO/BIOES; expected O, B-TYPE, I-TYPE (E-TYPE, "
                                 "S-TYPE)")
        self.scheme = "BIOES" if any(t[:2] in ("E-", "S-") for t in self.labels) else "BIO"
        if not isinstance(label_all_subwords, bool):   # "false" from a hand-edited head.json is truthy
            raise ValueError(f"label_all_subwords={label_all_subwords!r}; expected true or false")
        self.label_all_subwords = label_all_subwords
        self.dropout_prob = dropout_probability(dropout, config)
        self.dropout = nn.Dropout(self.dropout_prob)
        self.classifier = self.init_linear(nn.Linear(config.hidden_size, len(self.labels)), config)

    @classmethod
    def options_from_examples(cls, examples):
        """Every tag in the data, and each entity type's other prefixes of its scheme (B- and
        I-, and E- and S- in BIOES data): training data whose persons are all one word has no
        I-PER, and the head could then neither predict a longer one nor score a test set
        holding one. "O" first, then by entity type (B- before I-)."""
        tags = {str(t) for ex in examples for t in ex.get("tags", [])}
        formed = {t for t in tags if _well_formed(t)}
        # a tag outside BIO among good ones is left to the examples' check, which names its line
        tags = formed if formed - {"O"} else tags
        prefixes = ("B-", "I-", "E-", "S-") if any(t[:2] in ("E-", "S-") for t in tags) else ("B-", "I-")
        tags |= {p + t[2:] for t in tags if t[:2] in prefixes for p in prefixes}
        return {"labels": ["O"] + sorted(tags - {"O"}, key=lambda t: (t[2:], t[:2]))}

    def get_config(self):
        return {"labels": self.labels, "label_all_subwords": self.label_all_subwords, "dropout": self.dropout_prob}

    def check_example(self, example):
        super().check_example(example)
        tokens, tags = example["tokens"], example["tags"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens must be a list of strings")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags must be a list of strings")
        if len(tokens) != len(tags):
            raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags; give one tag per token")
        if not tokens:   # nothing to learn; a batch of such sentences has no loss at all (nan)
            raise ValueError("tokens is empty; a sentence needs one token at least: remove the example")
        for i, (token, tag) in enumerate(zip(tokens, tags)):   # word i + 1: a CoNLL sentence's (i + 1)th line
            if not _well_formed(tag):
                raise ValueError(f"word {i + 1} ({token!r}): tag {tag!r} is not BIO/BIOES; expected O, B-TYPE, "
                                 "I-TYPE (E-TYPE, S-TYPE)")
            if tag not in self.labels:
                raise ValueError(f"word {i + 1} ({token!r}): tag {tag!r} is not one of the head's labels "
                                 f"{self.labels}; data with another tag set needs a new head (its labels are fixed "
                                 "when it is built: given, or read from the training data)")
        for i, (token, tag) in enumerate(zip(tokens, tags)):
            if tag != "O" and not any(_kept(c) for c in token):
                raise ValueError(_no_subword(i, token, tag))

    def example_from_input(self, item):
        if isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
            return {"tokens": list(item)}
        return super().example_from_input(item)

    # ---- data ----------------------------------------------------------------------

    def encode(self, example, tokenizer, max_length=512):
        # A sentence longer than one window is read in overlapping windows, labelled or not, so that
        # every word is trained on and scored: one window cut at max_length scored the words past
        # the cut as "O" (evaluate's recall fell to what the window held). Each word's tag is learnt
        # in one window only, the one `decode` reads it from (farthest from an edge).
        self.require_text(example, "text")
        if "tokens" in example and (not isinstance(example["tokens"], (list, tuple))
                                    or not all(isinstance(w, str) for w in example["tokens"])):
            raise TypeError("'tokens' must be a list of words (strings)")
        windows = {"return_overflowing": True, "stride": max(0, (max_length - 2) // 4)}
        if "tokens" in example and len(example["tokens"]):
            enc = tokenizer(list(example["tokens"]), is_split_into_words=True, max_length=max_length,
                            truncation=True, return_offsets=True, **windows)
        elif "tokens" in example:  # no words: [CLS] [SEP] (the tokenizer takes [] for an empty batch)
            enc = tokenizer("", max_length=max_length, truncation=True, return_offsets=True)
        else:
            enc = tokenizer(example["text"], max_length=max_length, truncation=True, return_offsets=True,
                            **windows)
        features = [{"input_ids": enc["input_ids"][row], "token_type_ids": enc["token_type_ids"][row],
                     "word_ids": enc.word_ids(row), "offsets": [tuple(o) for o in enc["offset_mapping"][row]]}
                    for row in range(len(enc["input_ids"]))]
        if "tags" in example and "tokens" in example:
            if len(example["tags"]) != len(example["tokens"]):  # predict takes labelled input unchecked
                raise ValueError(f"{len(example['tokens'])} tokens but {len(example['tags'])} tags; "
                                 "give one tag per token")
            owner = _window_of_each_word([f["word_ids"] for f in features])
            for row, feature in enumerate(features):
                labels = self.align_labels(example["tags"], feature["word_ids"])
                feature["labels"] = [label if w is None or owner[w][0] == row else IGNORE_INDEX
                                     for label, w in zip(labels, feature["word_ids"])]
            # a tagged word without sub-words (one the tokenizer drops whole) would lose its tag unseen
            for w, tag in enumerate(example["tags"]):
                if tag != "O" and w not in owner:
                    raise ValueError(_no_subword(w, example["tokens"][w], tag))
        return features

    def align_labels(self, tags: list[str], word_ids: list) -> list[int]:
        """Per-token label ids: the word's tag on its first sub-word; -100 (or the
        continuation tag with `label_all_subwords`) on the rest; -100 on specials."""
        ids, previous = [], None
        for w in word_ids:
            if w is None:
                ids.append(IGNORE_INDEX)
            elif w != previous:
                ids.append(self._tag_id(tags[w]))
            elif self.label_all_subwords:
                tag = tags[w]
                inside = "I-" + tag[2:]
                ids.append(self._tag_id(inside if tag[:2] in ("B-", "S-") and inside in self.labels else tag))
            else:
                ids.append(IGNORE_INDEX)
            previous = w
        return ids

    def _tag_id(self, tag: str) -> int:
        try:
            return self.labels.index(tag)
        except ValueError:
            raise ValueError(f"tag {tag!r} is not in the head's labels {self.labels}") from None

    # ---- model ---------------------------------------------------------------------

    def forward(self, output, batch):
        return self.classifier(self.dropout(output.last_hidden_state))         # (T, C)

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["labels"].to(logits.device), ignore_index=IGNORE_INDEX)

    # ---- results -------------------------------------------------------------------

    def decode(self, example, features, outputs):
        if "tokens" in example:
            words = list(example["tokens"])
            text = " ".join(words)
            starts = itertools.accumulate((len(w) + 1 for w in words[:-1]), initial=0)   # each word after a space
            spans = [(s, s + len(w)) for s, w in zip(starts, words)]
        else:
            text = example["text"]
            spans = {}
            for feature in features:
                for w, (a, b) in zip(feature["word_ids"], feature["offsets"]):
                    if w is not None:
                        spans[w] = (min(a, spans.get(w, (a, b))[0]), max(b, spans.get(w, (a, b))[1]))
            # the normaliser drops combining marks (NFD accents) after a word's last sub-word: keep them
            spans = [(a, end_past_marks(text, b)) for a, b in (spans[w] for w in range(max(spans, default=-1) + 1))]
        tags, scores = ["O"] * len(spans), [1.0] * len(spans)
        # one argmax per window, not per word: ~30 small tensor ops per sentence were half of decode
        best = [[x.tolist() for x in out.softmax(-1).max(-1)] for out in outputs]   # per window: (L,), (L,)
        for w, (row, token) in _window_of_each_word([f["word_ids"] for f in features]).items():
            if w < len(tags):   # overlapping windows: the one where the word sits farthest from an edge decides
                tags[w], scores[w] = self.labels[best[row][1][token]], best[row][0][token]
        entities = []
        for label, first, last in get_entities(tags):
            start, end = spans[first][0], spans[last][1]
            entities.append({"label": label, "text": text[start:end], "start": start, "end": end,
                             "score": sum(scores[first:last + 1]) / (last + 1 - first)})
        return {"entities": entities, "tags": tags}

    def metrics(self, predictions, examples):
        # the three scores in one pass: precision_score, recall_score and f1_score each extract
        # every entity again (3x the time, a third of a 1500-sentence evaluation)
        from seqeval.metrics.sequence_labeling import precision_recall_fscore_support
        y_true = [list(ex["tags"]) for ex in examples]
        y_pred = [p["tags"] for p in predictions]
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}

    # ---- export --------------------------------------------------------------------

    @classmethod
    def options_from_transformers(cls, config):
        """A BertForTokenClassification checkpoint's tags."""
        if "BertForTokenClassification" not in (config.get("architectures") or []):
            return None
        return {"labels": transformers_labels(config)}

    def transformers_export(self) -> dict:
        """This head as transformers' BertForTokenClassification (`bertcore.export`)."""
        return {"architecture": "BertForTokenClassification", "pooler": False,
                "config": {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                           "label2id": {n: i for i, n in enumerate(self.labels)},
                           "classifier_dropout": self.dropout_prob},
                "state_dict": {"classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}}



def _window_of_each_word(windows: list[list]) -> dict[int, tuple[int, int]]:
    """{word: (window, token)}: where a word's tag is learnt and read, its first sub-word in
    the window where that sits farthest from an edge (the first of equals)."""
    owner, room = {}, {}
    for row, word_ids in enumerate(windows):
        first = {}
        for token, w in enumerate(word_ids):
            first.setdefault(w, token)      # a word's first sub-word decides its tag
        first.pop(None, None)
        for w, token in first.items():
            context = min(token, len(word_ids) - 1 - token)
            if context > room.get(w, -1):
                owner[w], room[w] = (row, token), context
    return owner


def _kept(char: str) -> bool:
    """Whether BERT's normaliser keeps `char` (it drops whitespace, control, format and
    private-use characters, and U+FFFD)."""
    return not (char.isspace() or char == "\ufffd" or unicodedata.category(char) in ("Cc", "Cf", "Co"))


def _no_subword(i: int, token: str, tag: str) -> str:
    return (f"token {i + 1} {token!r} is tagged {tag} but the tokenizer makes no sub-word of it (empty, "
            "whitespace or characters it drops), so the tag would be lost; remove the token or tag it O")


# ---- tags → spans, with seqeval's (conlleval's) chunk rules for BIO and BIOES ---------------

def _well_formed(tag: str) -> bool:
    """O, or a BIO/BIOES prefix and a type: B-PER, I-PER, E-PER, S-PER."""
    return tag == "O" or (len(tag) >= 3 and tag[:2] in ("B-", "I-", "E-", "S-"))


def _split(tag: str) -> tuple[str, str]:
    return (tag, "") if tag == "O" else (tag[0], tag[2:])


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev != "O" and prev_type != type_))


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and prev_type != type_))


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """[(type, first word, last word)] of the chunks in a BIO or BIOES tag sequence."""
    entities, start, prev, prev_type = [], None, "O", ""
    for i, tag in enumerate([*tags, "O"]):
        kind, type_ = _split(tag)
        if start is not None and _ends(prev, kind, prev_type, type_):
            entities.append((prev_type, start, i - 1))
            start = None
        if _starts(prev, kind, prev_type, type_):
            start = i
        prev, prev_type = kind, type_
    return entities


@hookimpl
def register_heads(register):
    register(NERHead)
