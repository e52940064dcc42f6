"""Next-sentence prediction head for bertcore: is B the sentence that follows A?

Pooled [CLS] → linear (2), BERT's `cls.seq_relationship`; its weights come from an
HF pretraining checkpoint when the encoder was loaded from one.

Example: {"text": A, "text_pair": B, "label": 0 (IsNext) | 1 (NotNext)} ("0"/"1", as a CSV
cell reads, and the names work too), or a pretokenized pair from
`bertcore.masking.make_nsp_pairs` (`input_ids`, `token_type_ids`, `next_sentence_label`).
Batch key: `next_sentence_label` (B,).
Prediction: {"label": 0 | 1, "label_name": "IsNext" | "NotNext", "score"}.
Metric: accuracy.
"""
import numbers

import torch.nn as nn
import torch.nn.functional as F

from bertcore import Head, hookimpl
from bertcore.heads import copy_pretrained_weights

BERTCORE_REQUIRES = ">=0.1,<0.2"
LABELS = ("IsNext", "NotNext")



def label_id(label) -> int:
    """0 (IsNext) or 1 (NotNext) from 0/1, "0"/"1" (a CSV cell) or the names; anything else
    → ValueError naming the accepted values."""
    if isinstance(label, numbers.Integral) and not isinstance(label, bool) and label in (0, 1):
        return int(label)
    if isinstance(label, str) and label.strip() in ("0", "1", *LABELS):
        label = label.strip()
        return LABELS.index(label) if label in LABELS else int(label)
    raise ValueError(f"label {label!r} is not an NSP label; expected 0 or IsNext (B follows A), 1 or NotNext")


class NSPHead(Head):
    name = "nsp"
    description = "next sentence prediction: IsNext (0) / NotNext (1) on the pooled [CLS]"
    main_metric = "accuracy"
    greater_is_better = True
    label_keys = ("next_sentence_label",)
    required_keys = ("text", "text_pair", "label")

    def __init__(self, config):
        super().__init__(config)
        self.seq_relationship = self.init_linear(nn.Linear(config.hidden_size, 2), config)

    def load_pretrained_weights(self, cls_weights):
        names = {"seq_relationship.weight": ["weight"], "seq_relationship.bias": ["bias"]}
        return copy_pretrained_weights(self, cls_weights, "cls.seq_relationship.", names)

    def example_from_input(self, item):
        if isinstance(item, str):
            raise TypeError("NSP predicts on sentence pairs: pass (text, text_pair) tuples or dicts")
        return super().example_from_input(item)

    def check_example(self, example):
        if "input_ids" not in example:
            if "label" not in example and "next_sentence_label" in example:   # the batch key, as encode reads it
                example = {**example, "label": example["next_sentence_label"]}
            super().check_example(example)
            for key in ("text", "text_pair"):
                if not isinstance(example[key], str):
                    raise ValueError(f"{key} is {type(example[key]).__name__} {example[key]!r}; expected a string")
            label_id(example["label"])
            return
        if "next_sentence_label" not in example:  # a pretokenized pair (masking.make_nsp_pairs)
            raise ValueError("a pretokenized NSP pair needs next_sentence_label (0 IsNext, 1 NotNext)")
        label_id(example["next_sentence_label"])

    def encode(self, example, tokenizer, max_length=512):
        if "input_ids" in example:
            ids = list(example["input_ids"])
            feature = {"input_ids": ids, "token_type_ids": list(example.get("token_type_ids", [0] * len(ids)))}
        else:
            self.require_text(example, "text", "text_pair")
            enc = tokenizer(example["text"], example["text_pair"], max_length=max_length, truncation=True)
            feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
        label = example.get("next_sentence_label", example.get("label"))
        if label is not None:
            feature["next_sentence_label"] = label_id(label)
        return [feature]

    def forward(self, output, batch):
        return self.seq_relationship(output.pooler_output)                     # (B, 2)

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["next_sentence_label"].to(logits.device))

    def decode(self, example, features, outputs):
        probs = outputs[0].softmax(-1)
        label = int(probs.argmax())
        return {"label": label, "label_name": LABELS[label], "score": float(probs[label])}

    def metrics(self, predictions, examples):
        gold = [ex.get("next_sentence_label", ex.get("label")) for ex in examples]
        gold = [label_id(g) for g in gold]
        correct = sum(p["label"] == g for p, g in zip(predictions, gold))
        return {"accuracy": correct / len(gold) if gold else 0.0}


@hookimpl
def register_heads(register):
    register(NSPHead)
