"""The head contract (`Head`), `HeadInfo`, and the built-in masked-LM head.

A head type brings everything its task needs, so that the Trainer and
`TaskModel.predict` never special-case a task:

    example ──encode──▶ features ──collate──▶ batch ──encoder+forward──▶ logits
       ▲                                                                  │
       └── metrics ◀── predictions ◀──decode── per-feature outputs ◀─split┘

Batches are packed: `input_ids` and `token_type_ids` are (T,) with every sequence
back to back, `cu_seqlens` (B+1,) int32 and `max_seqlen` an int computed on the
host. Labels ride along in the batch under the head's own keys.
"""
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .config import BertConfig
from .model import BertOutput
from .padding import collate_packed


@dataclass(frozen=True)
class HeadInfo:
    """One installed head type, as `bertcore.list_heads()` reports it."""

    name: str
    version: str
    distribution: str
    description: str
    error: str | None = None


class Head(nn.Module):
    """Base class of every task head. Subclass it, set `name`, and override the
    methods marked "override"; the defaults fit a sequence-level task."""

    name: ClassVar[str] = ""          # registry name, e.g. "classification"
    description: ClassVar[str] = ""   # one line, shown by `bertcore heads`
    main_metric: ClassVar[str] = "loss"      # what "best checkpoint" means
    greater_is_better: ClassVar[bool] = False

    def __init__(self, config: BertConfig, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"head {self.name!r} got unknown options: {', '.join(sorted(kwargs))}")
        self.config = config

    # ---- saving --------------------------------------------------------------------

    def get_config(self) -> dict:
        """override: JSON-serialisable kwargs that rebuild this head (labels, options)."""
        return {}

    def attach(self, encoder: nn.Module) -> None:
        """Called when the head joins a TaskModel (e.g. to tie weights to the encoder)."""

    def load_pretrained_weights(self, cls_weights: dict[str, torch.Tensor]) -> bool:
        """Take this head's weights from an HF pretraining checkpoint's `cls.*` keys, if
        there are any for it. Returns whether anything was loaded."""
        return False

    # ---- data ----------------------------------------------------------------------

    def example_from_input(self, item: Any) -> dict:
        """What `predict` accepts: a str, a (text, text_pair) tuple, or an example dict."""
        if isinstance(item, dict):
            return item
        if isinstance(item, str):
            return {"text": item}
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return {"text": item[0], "text_pair": item[1]}
        raise TypeError(f"head {self.name!r} cannot predict on {type(item).__name__}; pass a str or a dict")

    def encode(self, example: dict, tokenizer, max_length: int = 512) -> list[dict]:
        """override: one raw example → a list of features (usually one; QA: one per window).
        A feature holds `input_ids`, `token_type_ids` (lists) and the head's label keys,
        which are absent when the example has no label (prediction)."""
        raise NotImplementedError

    def collate(self, features: list[dict]) -> dict:
        """Pack features into a batch. Heads extend this to add their label tensors."""
        input_ids, cu_seqlens, max_seqlen = collate_packed([f["input_ids"] for f in features])
        token_type_ids = torch.tensor([t for f in features for t in f["token_type_ids"]], dtype=torch.long)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids,
                "cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen}

    # ---- model ---------------------------------------------------------------------

    def forward(self, output: BertOutput, batch: dict):
        """override: encoder output (packed: last_hidden_state (T, H), pooler_output (B, H))
        → logits (a tensor or a dict of tensors)."""
        raise NotImplementedError

    def loss(self, logits, batch: dict) -> torch.Tensor:
        """override: scalar training loss from logits and the batch's labels."""
        raise NotImplementedError

    # ---- results -------------------------------------------------------------------

    def split(self, logits, batch: dict) -> list:
        """Per-feature outputs on the CPU: rows of (B, ...) logits, or (T, ...) token
        logits cut at cu_seqlens. A dict of logits gives a dict per feature."""
        if isinstance(logits, dict):
            parts = {k: self.split(v, batch) for k, v in logits.items()}
            return [dict(zip(parts, values)) for values in zip(*parts.values())]
        logits = logits.detach().float().cpu()
        bounds = batch["cu_seqlens"].tolist()
        if logits.shape[0] == len(bounds) - 1:
            return list(logits)
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def decode(self, example: dict, features: list[dict], outputs: list) -> Any:
        """override: one example's per-feature outputs → what a user wants (a label with
        its score, an answer with its character span, entities, ...)."""
        raise NotImplementedError

    def metrics(self, predictions: list, examples: list[dict]) -> dict[str, float]:
        """override: task metrics of decoded predictions against the examples' labels."""
        return {}
