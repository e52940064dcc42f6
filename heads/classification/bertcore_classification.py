"""Sequence classification head for bertcore: pooled [CLS] → dropout → linear.

`pooling="mean"` reads the mean of the sequence's token vectors instead of the pooled
[CLS] (sentence-transformers' default pooling): for encoders whose [CLS] was not trained
to summarise the text, such as the demo's, whose heads start out looking at neighbours.

Single texts or pairs; three problem types, picked from the options:

    create_head("classification", cfg, labels=["neg", "pos"])        # single-label, cross-entropy
    create_head("classification", cfg, labels=[...], multi_label=True)  # multi-label, BCE
    create_head("classification", cfg, num_labels=1)                 # regression, MSE

Example: {"text": str, "text_pair": str (optional), "label": str | int | float | list}.
Prediction: single-label {"label", "score", "scores"}; multi-label {"labels",
"scores"}; regression {"value"}. Metrics: accuracy, macro_f1, mcc (multi-label:
accuracy is exact-set match, macro_f1 over labels); regression pearson, spearman.
"""
import math
import numbers
import re
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bertcore import Head, hookimpl
from bertcore.data import where
from bertcore.heads import dropout_probability, masked_mean, transformers_labels

BERTCORE_REQUIRES = ">=0.1,<0.2"



class ClassificationHead(Head):
    name = "classification"
    description = "sequence classification: single/pair, single-label, multi-label, regression"
    main_metric = "accuracy"
    greater_is_better = True
    required_keys = ("text", "label")

    def __init__(self, config, labels=None, num_labels=None, multi_label=False, dropout=None, pooling="cls"):
        super().__init__(config)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r}; expected 'cls' (BERT's pooled [CLS]) or 'mean' (token mean)")
        self.pooling = pooling
        if not isinstance(multi_label, bool):       # "false" from a hand-edited head.json is truthy
            raise ValueError(f"multi_label={multi_label!r}; expected true or false")
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):  # "neg,pos" is not 7 labels
                raise ValueError(f"labels={labels!r}; expected a list of label names")
            labels = list(labels)
            for i, label in enumerate(labels):   # str(None), str(["a"]) would name a class no label ever is
                if isinstance(label, bool) or not isinstance(label, (str, numbers.Integral)):  # numpy ints too
                    raise ValueError(f"labels: label {i + 1} of {len(labels)} is "
                                     f"{'None' if label is None else f'{type(label).__name__} {label!r}'}, not a "
                                     "class name; labels are strings (or ints)")
            labels = [str(x) for x in labels]
            for i, label in enumerate(labels):   # a repeat or a blank would make a dead class
                if not label.strip():
                    raise ValueError(f"labels: label {i + 1} of {len(labels)} is empty; name every class")
                if labels.index(label) != i:
                    raise ValueError(f"labels: {label!r} is given twice; name each class once")
            if num_labels not in (None, len(labels)):
                raise ValueError(f"num_labels={num_labels} but {len(labels)} labels given; pass one of them")
            if len(labels) == 1 and not multi_label:   # a softmax over one class: always it, loss 0, nothing learnt
                raise ValueError(f"labels={labels} name one class, which a classifier always predicts; give 2 or "
                                 "more (training data whose labels are all one?), num_labels=1 for a regression, "
                                 "or multi_label=True for a yes/no tag")
            num_labels = len(labels)
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral)):
            raise ValueError(f"num_labels={num_labels!r}; expected a whole number (1 = regression)")
        num_labels = None if num_labels is None else int(num_labels)
        if num_labels is None or num_labels < 1:
            raise ValueError("the classification head needs labels=[names] or num_labels=N (1 = regression)")
        self.labels, self.num_labels, self.multi_label = labels, num_labels, multi_label
        self.problem = "multi_label" if multi_label else ("regression" if num_labels == 1 and not labels
                                                          else "single_label")
        if self.problem == "regression":
            self.main_metric = "pearson"  # regression reports no accuracy
        self.dropout_prob = dropout_probability(dropout, config)
        self.dropout = nn.Dropout(self.dropout_prob)
        self.classifier = self.init_linear(nn.Linear(config.hidden_size, num_labels), config)

    @classmethod
    def options_from_examples(cls, examples):
        """Labels sorted; a list label makes the task multi-label; numbers that are not all
        whole make it a regression, written as JSON numbers or as text (a CSV cell: "3.8")."""
        # a missing or empty label names no class: the example's own check says where it is
        labels = [x for x in (ex.get("label") for ex in examples) if x is not None and str(x).strip()]
        if examples and not labels:   # no class to read at all (it read "None", one class)
            raise ValueError(f"{where(examples, 0)}: missing label, as in every example; a {cls.name} example needs "
                             "text, label")
        if any(isinstance(x, list) for x in labels):
            return {"labels": sorted({str(y) for x in labels for y in (x if isinstance(x, list) else [x])}),
                    "multi_label": True}
        numbers = [_number(x) for x in labels]
        if labels and None not in numbers and any(not v.is_integer() for v in numbers):
            return {"num_labels": 1}
        return {"labels": sorted({str(x) for x in labels})}

    def get_config(self) -> dict:
        return {"labels": self.labels, "num_labels": self.num_labels, "multi_label": self.multi_label,
                "dropout": self.dropout_prob, "pooling": self.pooling}

    def prepare(self, tokenizer, train_examples=None):
        if train_examples is not None and self.problem == "single_label":
            seen = {str(ex["label"]) for ex in train_examples}
            if len(seen) == 1:
                warnings.warn(f"the training data has one class only ({seen.pop()!r}); the head will learn "
                              "to predict it always", stacklevel=2)

    def check_example(self, example):
        super().check_example(example)
        for key in ("text", "text_pair"):
            if key in example and not isinstance(example[key], str):
                raise ValueError(f"{key} is {type(example[key]).__name__} {example[key]!r}; expected a string")
        self._check_label(example["label"])

    def _check_label(self, label) -> None:
        """ValueError naming a label this head cannot train on."""
        if self.problem == "regression":
            try:
                ok = not isinstance(label, bool) and math.isfinite(float(label))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"label {label!r} is not a finite number (this head is a regression)")
        elif self.problem == "multi_label":
            items = [label] if isinstance(label, (str, int)) and not isinstance(label, bool) else label
            if not isinstance(items, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                                      for x in items):
                raise ValueError(f"label {label!r} is not a label or a list of labels")
            for item in items:
                self.label_index(item)
        else:
            if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
                raise ValueError(f"label {label!r} is not a class name or index (a non-empty string or an int)")
            self.label_index(label)

    def label_index(self, label) -> int:
        if self.labels is not None and str(label) in self.labels:
            return self.labels.index(str(label))
        # an int is a class index, unless the names are numbers: then 0 under labels ["1", ..., "5"] is
        # no class at all, not the first one
        numbered = self.labels is not None and any(re.fullmatch(r"[+-]?\d+", n.strip()) for n in self.labels)
        index = label
        if isinstance(label, str) and re.fullmatch(r"\d+", label):
            index = int(label)   # a CSV/TSV cell has no types: GLUE's 0/1 is the index a JSON 0/1 is
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < self.num_labels and not numbered:
            return index
        raise ValueError(f"label {label!r} is not one of the head's labels "
                         f"{self.labels or list(range(self.num_labels))}; data with another label set needs a new "
                         "head (its labels are fixed when it is built: given, or read from the training data)")

    def label_name(self, index: int):
        return self.labels[index] if self.labels is not None else index

    # ---- data ----------------------------------------------------------------------

    def encode(self, example, tokenizer, max_length=512):
        self.require_text(example, "text", "text_pair", optional=("text_pair",))
        enc = tokenizer(example["text"], example.get("text_pair"), max_length=max_length, truncation=True)
        feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
        label = example.get("label")
        if label is not None:
            self._check_label(label)  # predict takes labelled input unchecked: "abc" failed in float() unnamed
            if self.problem == "regression":
                feature["labels"] = float(label)
            elif self.problem == "multi_label":
                hot = [0.0] * self.num_labels
                for item in ([label] if isinstance(label, (str, int)) else label):
                    hot[self.label_index(item)] = 1.0
                feature["labels"] = hot
            else:
                feature["labels"] = self.label_index(label)
        return [feature]

    # ---- model ---------------------------------------------------------------------

    def forward(self, output, batch):
        if self.pooling == "cls":
            return self.classifier(self.dropout(output.pooler_output))         # (B, C)
        mean = masked_mean(*self.token_vectors(output, batch))                 # (B, H)
        return self.classifier(self.dropout(mean))                             # (B, C)

    def loss(self, logits, batch):
        labels = batch["labels"].to(logits.device)
        if self.problem == "regression":
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        if self.problem == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    # ---- results -------------------------------------------------------------------

    def decode(self, example, features, outputs):
        logits = outputs[0]
        if self.problem == "regression":
            return {"value": float(logits[0])}
        if self.problem == "multi_label":
            probs = torch.sigmoid(logits).tolist()
            return {"labels": [self.label_name(i) for i, p in enumerate(probs) if p > 0.5],
                    "scores": {self.label_name(i): p for i, p in enumerate(probs)}}
        probs = logits.softmax(-1).tolist()
        best = int(np.argmax(probs))
        return {"label": self.label_name(best), "score": probs[best],
                "scores": {self.label_name(i): p for i, p in enumerate(probs)}}

    def metrics(self, predictions, examples):
        gold = [ex["label"] for ex in examples]
        if self.problem == "regression":
            pred = [p["value"] for p in predictions]
            return {"pearson": pearson(pred, [float(g) for g in gold]),
                    "spearman": spearman(pred, [float(g) for g in gold])}
        if self.problem == "multi_label":
            gold_sets = [{self.label_index(x) for x in ([g] if isinstance(g, (str, int)) else g)} for g in gold]
            pred_sets = [{self.label_index(x) for x in p["labels"]} for p in predictions]
            f1s = [_f1(sum(c in g and c in p for g, p in zip(gold_sets, pred_sets)),
                       sum(c in p for p in pred_sets), sum(c in g for g in gold_sets))
                   for c in range(self.num_labels)]
            return {"accuracy": float(np.mean([g == p for g, p in zip(gold_sets, pred_sets)])),
                    "macro_f1": float(np.mean(f1s))}
        y_true = [self.label_index(g) for g in gold]
        y_pred = [self.label_index(p["label"]) for p in predictions]
        return {"accuracy": float(np.mean(np.equal(y_true, y_pred))), "macro_f1": macro_f1(y_true, y_pred),
                "mcc": mcc(y_true, y_pred)}

    # ---- export --------------------------------------------------------------------

    @classmethod
    def options_from_transformers(cls, config):
        """A BertForSequenceClassification checkpoint's classes and problem type."""
        if "BertForSequenceClassification" not in (config.get("architectures") or []):
            return None
        labels, problem = transformers_labels(config), config.get("problem_type")
        if problem == "regression" or (problem is None and len(labels) == 1):   # transformers' own rule
            return {"num_labels": 1}
        return {"labels": labels, "multi_label": problem == "multi_label_classification"}

    def transformers_export(self) -> dict:
        """This head as transformers' BertForSequenceClassification (`bertcore.export`)."""
        if self.pooling != "cls":
            raise ValueError(f"a classification head with pooling={self.pooling!r} has no transformers class "
                             "(BertForSequenceClassification reads the pooled [CLS]); export it for serving "
                             "instead (--to onnx, or bertcore.export.ServingModel)")
        names = self.labels or [f"LABEL_{i}" for i in range(self.num_labels)]
        problem = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                   "regression": "regression"}[self.problem]
        return {"architecture": "BertForSequenceClassification",
                "config": {"num_labels": self.num_labels, "id2label": dict(enumerate(names)),
                           "label2id": {n: i for i, n in enumerate(names)}, "problem_type": problem,
                           "classifier_dropout": self.dropout_prob},
                "state_dict": {"classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}}


# ---- metrics (numpy only; no scipy/sklearn dependency) ------------------------------------

def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0


def macro_f1(y_true, y_pred) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (sklearn's average='macro')."""
    classes = sorted(set(y_true) | set(y_pred))
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([_f1(int(np.sum((t == c) & (p == c))), int(np.sum(p == c)), int(np.sum(t == c)))
                          for c in classes])) if classes else 0.0


def mcc(y_true, y_pred) -> float:
    """Matthews correlation, multi-class (Gorodkin's R_K, as sklearn computes it)."""
    classes = sorted(set(y_true) | set(y_pred))
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)))
    for t, p in zip(y_true, y_pred):
        confusion[index[t], index[p]] += 1
    t_sum, p_sum = confusion.sum(1), confusion.sum(0)
    correct, n = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((n * n - p_sum @ p_sum) * (n * n - t_sum @ t_sum))
    return float((correct * n - t_sum @ p_sum) / denominator) if denominator else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else 0.0


def rank(values) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span (scipy's 'average')."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(rank(x), rank(y))


@hookimpl
def register_heads(register):
    register(ClassificationHead)


def _number(label) -> float | None:
    """A label as a finite number (a JSON number, or text that reads as one), else None."""
    if isinstance(label, bool) or not isinstance(label, (int, float, str)):
        return None
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
