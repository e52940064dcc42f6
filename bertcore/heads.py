"""The head contract: `Head`, the base class of every task head, and `HeadInfo`.

A head type brings everything its task needs, so that core code never names a task:

    examples ──options_from_examples──▶ head options (labels, ...)
    examples ──prepare──▶ head state set before encoding (once, explicitly)
    example ──check_example──▶ ok, or ValueError naming the problem
    example ──encode──▶ features ──collate_labels──▶ label tensors ┐
                        features ──(core) pack tokens once─────────┴▶ batch
    batch ──encoder──▶ BertOutput ──forward──▶ logits ──loss──▶ scalar
    logits ──split──▶ per-feature outputs ──decode──▶ predictions ──metrics──▶ dict

Batches are packed: `input_ids` and `token_type_ids` are (T,) with every sequence
back to back, `cu_seqlens` (B+1,) int32 and `max_seqlen` an int computed on the host.
Labels ride along in the batch under the head's own keys (`label_keys`). Several
heads can share one batch (MLM + NSP): the core packs the tokens once and merges
each head's `collate_labels`.

Plugins hand head types to the registry through the `register_heads` hook (see
`hookspecs.py`); the built-in MLM head (`mlm.py`) does the same.
"""
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .checkpoint import load_weights
from .config import BertConfig
from .masking import IGNORE_INDEX
from .model import BertOutput
from .padding import collate_packed, position_ids_packed

__all__ = ["Head", "HeadInfo", "IGNORE_INDEX", "pack_features", "copy_pretrained_weights"]


@dataclass(frozen=True)
class HeadInfo:
    """One installed head type, as `bertcore.list_heads()` reports it."""

    name: str
    version: str
    distribution: str
    description: str
    error: str | None = None


def pack_features(features: list[dict]) -> dict:
    """The token part of a batch: packed `input_ids`, `token_type_ids` (T,), `cu_seqlens`
    (B+1,) int32 and `max_seqlen` (host int). Done once per batch, whatever the heads."""
    input_ids, cu_seqlens, max_seqlen = collate_packed([f["input_ids"] for f in features])
    token_type_ids = torch.tensor([t for f in features for t in f["token_type_ids"]], dtype=torch.long)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each sequence's real token vectors: (N, L, H) and an (N, L) bool mask
    (`Head.token_vectors`) → (N, H); zeros for a sequence without tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)                              # (N, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)           # (N, H)


class Head(nn.Module):
    """Base class of every task head. Subclass it, set `name`, and override the
    methods marked "override"; the defaults fit a sequence-level task whose features
    carry their labels under `label_keys`."""

    name: ClassVar[str] = ""          # registry name, e.g. "classification"
    description: ClassVar[str] = ""   # one line, shown by `bertcore heads`
    main_metric: ClassVar[str] = "loss"      # what "best checkpoint" means; `metrics` must report it
    greater_is_better: ClassVar[bool] = False
    label_keys: ClassVar[tuple[str, ...]] = ("labels",)  # feature/batch keys `loss` reads
    required_keys: ClassVar[tuple[str, ...]] = ()        # keys a labelled example must have
    token_labels: ClassVar[bool] = False     # label lists hold one value per token (NER), not per sequence

    def __init__(self, config: BertConfig, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"head {self.name!r} got unknown options: {', '.join(sorted(kwargs))}")
        self.config = config

    # ---- building and saving ---------------------------------------------------------

    @classmethod
    def options_from_examples(cls, examples: Sequence[dict]) -> dict:
        """override: head options read from training data, e.g. {"labels": [...]}, for
        building a head when the user gave none (the CLI does)."""
        return {}

    @classmethod
    def options_from_checkpoint(cls, directory) -> dict:
        """override: head options an encoder checkpoint folder carries (e.g. the pooling of
        a sentence-transformers model); {} when it says nothing for this head."""
        return {}

    @classmethod
    def options_from_transformers(cls, config: dict) -> dict | None:
        """optional: the options for a transformers checkpoint whose config.json is
        `config`, when its `architectures` name the class `transformers_export` writes; None
        otherwise. `TaskModel.from_pretrained` of such a folder builds this head with them
        and copies in the weights `transformers_export` names."""
        return None

    def get_config(self) -> dict:
        """override: JSON-serialisable kwargs that rebuild this head (labels, options):
        `type(head)(config, **head.get_config())` is the same head, untrained."""
        return {}

    def attach(self, encoder: nn.Module) -> None:
        """Called when the head joins a TaskModel (e.g. to tie weights to the encoder)."""

    def transformers_export(self) -> dict | None:
        """override: this head as a transformers class, for `bertcore.export`:
        {"architecture": "BertFor...", "config": {keys added to config.json},
        "state_dict": {transformers name: tensor}, "pooler": bool (default True)}.
        None: the head has no transformers equivalent."""
        return None

    def load_pretrained_weights(self, cls_weights: dict[str, torch.Tensor]) -> bool:
        """Take this head's weights from an HF pretraining checkpoint's `cls.*` keys, if
        there are any for it. Returns whether anything was loaded."""
        return False

    @staticmethod
    def require_text(example: dict, *keys: str, optional: tuple = ()) -> None:
        """TypeError naming a field `encode` reads as text that is not a string (a JSON
        null, a number); a key in `optional` may also be None. `TaskModel.encode` turns it
        into a ValueError naming the example (the CLI: its file and line)."""
        for key in keys:
            value = example.get(key)
            if key in example and not isinstance(value, str) and not (key in optional and value is None):
                shown = "null" if value is None else f"{type(value).__name__} {repr(value)[:40]}"
                raise TypeError(f"{key!r} is {shown}, not a string; make {key} a string")

    @staticmethod
    def init_linear(layer: nn.Linear, config: BertConfig) -> nn.Linear:
        """BERT's initialisation of a head's linear layer: normal(0, initializer_range), zero bias."""
        nn.init.normal_(layer.weight, std=config.initializer_range)
        nn.init.zeros_(layer.bias)
        return layer

    # ---- data ----------------------------------------------------------------------

    def prepare(self, tokenizer, train_examples: Sequence[dict] | None = None) -> None:
        """override: set state that depends on the tokenizer or the training data, once,
        before anything is encoded (QA turns on no-answer for SQuAD 2.0 data; MLM takes
        the tokenizer's special ids). The Trainer calls it with the training examples,
        `TaskModel.predict`/`evaluate` without. `encode` itself never changes the head."""

    def check_example(self, example: dict) -> None:
        """override (extend): raise ValueError naming what is wrong with one labelled
        example; the caller adds the file and line. The default checks `required_keys`."""
        self.check_keys(example)

    @classmethod
    def check_keys(cls, example: dict) -> None:
        """ValueError unless `example` is a dict with the `required_keys`: the check a head
        type makes before it is built (the options it reads from the data assume them)."""
        if not isinstance(example, dict):
            raise ValueError(f"is a {type(example).__name__}; expected a dict with keys "
                             f"{', '.join(cls.required_keys)}")
        missing = [k for k in cls.required_keys if k not in example]
        if missing:
            hint = ""
            if set(example) - set(cls.required_keys):    # the field under another name, e.g. GLUE's "sentence"
                hint = f"; to read another column as {missing[0]}: --rename OLD={missing[0]} (load_examples(rename=))"
            raise ValueError(f"missing {', '.join(missing)}; a {cls.name} example needs "
                             f"{', '.join(cls.required_keys)} (it has {', '.join(example) or 'nothing'}){hint}")

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
        which are absent when the example has no label (prediction). A pure function of
        its arguments and the head's options: it never changes the head."""
        raise not_implemented(self, "encode")

    def collate_labels(self, features: list[dict], batch: dict) -> dict:
        """The head's label tensors for a batch whose tokens the core has packed into
        `batch`: each of `label_keys` that every feature has, stacked (ints → int64,
        floats → float32; with `token_labels`, per-token lists are concatenated in packed
        order). Override when labels need more (MLM also returns masked `input_ids`)."""
        out = {}
        for key in self.label_keys:
            if not features or not all(key in f for f in features):
                continue
            values = [f[key] for f in features]
            if self.token_labels:
                values = [v for f in values for v in f]                          # (T,) packed
            tensor = torch.tensor(values)                                        # (B, ...) or (T,)
            out[key] = tensor.float() if tensor.is_floating_point() else tensor.long()
        return out

    def collate(self, features: list[dict]) -> dict:
        """A batch for this head alone: packed tokens plus `collate_labels`."""
        batch = pack_features(features)
        batch.update(self.collate_labels(features, batch))
        return batch

    # ---- model ---------------------------------------------------------------------

    def forward(self, output: BertOutput, batch: dict):
        """override: encoder output (packed: last_hidden_state (T, H), pooler_output (B, H))
        → logits (a tensor or a dict of tensors). The padded serving path
        (`bertcore.export.ServingModel`) passes (B·L, H) token rows, every sequence L long
        with zeros at padding, and `batch["attention_mask"]` (B, L): heads that pool over
        tokens must use it."""
        raise not_implemented(self, "forward")

    def loss(self, logits, batch: dict) -> torch.Tensor:
        """override: scalar training loss from logits and the batch's labels: a mean over
        `loss_count(batch)` units."""
        raise not_implemented(self, "loss")

    def loss_count(self, batch: dict) -> int:
        """override: how many units `loss` averages over in this batch: its sequences, or
        with `token_labels` its labelled tokens. Evaluation weights each batch's loss by
        it, so the reported loss is the mean per unit whatever the batch size."""
        if self.token_labels:
            return int((batch[self.label_keys[0]] != IGNORE_INDEX).sum())
        return len(batch["cu_seqlens"]) - 1

    def has_labels(self, batch: dict) -> bool:
        """Whether the batch carries this head's labels (so `loss` can run)."""
        return all(key in batch for key in self.label_keys)

    @staticmethod
    def padded(x: torch.Tensor, batch: dict, fill: float = 0.0) -> torch.Tensor:
        """Packed (T, ...) → (B, max_seqlen, ...), `fill` past each sequence's end
        (for per-sequence softmaxes such as QA's start/end)."""
        cu_seqlens = batch["cu_seqlens"].to(x.device)
        batch_size, total = cu_seqlens.numel() - 1, x.shape[0]
        seq = torch.repeat_interleave(torch.arange(batch_size, device=x.device),
                                      (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=total)  # (T,)
        pos = position_ids_packed(cu_seqlens, total)                          # (T,)
        out = x.new_full((batch_size, int(batch["max_seqlen"]), *x.shape[1:]), fill)
        out[seq, pos] = x
        return out

    def token_vectors(self, output, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token vectors (B, L, H) and their (B, L) bool mask of real tokens, for
        heads that pool over tokens: packed batches are padded here; the padded serving
        path (`bertcore.export`) brings its `attention_mask`."""
        x = output.last_hidden_state
        if "attention_mask" in batch:                                          # (B·L, H) rows, L per sequence
            mask = batch["attention_mask"].to(x.device).bool()                 # (B, L)
            return x.reshape(*mask.shape, x.shape[-1]), mask
        padded = self.padded(x, batch)                                         # (B, L, H)
        cu_seqlens = batch["cu_seqlens"].to(x.device)
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()                   # (B,)
        mask = torch.arange(padded.shape[1], device=x.device)[None] < lengths[:, None]  # (B, L)
        return padded, mask

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
            return list(logits)                                                # (B, ...) rows
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]          # (T, ...) cut

    def decode(self, example: dict, features: list[dict], outputs: list) -> Any:
        """override: one example's per-feature outputs → what a user wants (a label with
        its score, an answer with its character span, entities, ...)."""
        raise not_implemented(self, "decode")

    def metrics(self, predictions: list, examples: list[dict]) -> dict[str, float]:
        """override: task metrics of decoded predictions against the examples' labels;
        includes `main_metric` (unless that is "loss")."""
        return {}


def dropout_probability(dropout, config: BertConfig) -> float:
    """A head's `dropout` option checked (None: the encoder's hidden_dropout_prob): torch's
    own message named the value but not the option, and "0.1" from a file got no message."""
    if dropout is None:
        return config.hidden_dropout_prob
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout={dropout!r} must be a number in [0, 1] (None: the encoder's "
                         f"hidden_dropout_prob, {config.hidden_dropout_prob})")
    return float(dropout)


def transformers_labels(config: dict) -> list[str]:
    """A transformers config's class names in id order (its id2label; LABEL_i without one)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    count = int(config.get("num_labels") or len(id2label) or 2)
    return [id2label.get(i, f"LABEL_{i}") for i in range(max(count, len(id2label)))]


def not_implemented(head: "Head", method: str) -> NotImplementedError:
    """A head type that leaves one of `Head`'s methods to override unwritten: which, and where."""
    return NotImplementedError(f"head type {head.name!r} ({type(head).__module__}.{type(head).__qualname__}) does "
                               f"not implement {method}(), which every head overrides; see bertcore.heads.Head")


def copy_pretrained_weights(head: nn.Module, cls_weights: dict, prefix: str, names: dict[str, list[str]]) -> bool:
    """Copy `cls.*` tensors into `head` (own name -> candidate checkpoint names under `prefix`).
    Loads nothing unless every weight is there; a shape mismatch is an error naming the key."""
    found = {}
    for key, candidates in names.items():
        hit = next((prefix + c for c in candidates if prefix + c in cls_weights), None)
        if hit is None:
            return False
        found[key] = cls_weights[hit]
    load_weights(head, found, f"the pretrained {prefix}* weights for the {head.name} head", strict=False)
    return True
