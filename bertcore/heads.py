"""The head contract (`Head`), `HeadInfo`, and the built-in masked-LM head.

A head type brings everything its task needs, so that the Trainer and
`TaskModel.predict` never special-case a task:

    example ──encode──▶ features ──collate──▶ batch ──encoder+forward──▶ logits
       ▲                                                                  │
       └── metrics ◀── predictions ◀──decode── per-feature outputs ◀─split┘

Batches are packed: `input_ids` and `token_type_ids` are (T,) with every sequence
back to back, `cu_seqlens` (B+1,) int32 and `max_seqlen` an int computed on the
host. Labels ride along in the batch under the head's own keys (`label_keys`).

Plugins hand head types to the registry through the `register_heads` hook; the
`register_heads` at the bottom of this module does the same for the MLM head, named
by core's own entry point (`mlm = "bertcore.heads"` in pyproject.toml).
"""
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig
from .hookspecs import hookimpl
from .model import BertOutput
from .padding import collate_packed, position_ids_packed

IGNORE_INDEX = -100  # label of positions a loss skips (cross_entropy's default)


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
    label_keys: ClassVar[tuple[str, ...]] = ("labels",)  # batch keys `loss` reads

    def __init__(self, config: BertConfig, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"head {self.name!r} got unknown options: {', '.join(sorted(kwargs))}")
        self.config = config

    # ---- saving --------------------------------------------------------------------

    def get_config(self) -> dict:
        """override: JSON-serialisable kwargs that rebuild this head (labels, options):
        `type(head)(config, **head.get_config())` is the same head, untrained."""
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
        raise NotImplementedError

    def metrics(self, predictions: list, examples: list[dict]) -> dict[str, float]:
        """override: task metrics of decoded predictions against the examples' labels."""
        return {}


# ---- the built-in masked-LM head ------------------------------------------------------

class _Transform(nn.Module):
    """dense → activation → LayerNorm, as HF's `cls.predictions.transform`."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = {"relu": F.relu, "gelu": F.gelu}.get(
            config.hidden_act, lambda t: F.gelu(t, approximate="tanh"))

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))                        # (M, H)


class MLMHead(Head):
    """Masked language model: transform, then a decoder tied to the encoder's word
    embeddings plus its own bias (BERT's `cls.predictions`).

    Batch keys: `labels` (T,) packed, the original id at picked tokens and -100
    elsewhere, and `mlm_positions` (M,) the packed indices to predict. Vocabulary
    logits are computed at those M positions only, never at all T tokens.
    `collate` masks dynamically (fresh masks each batch, `bertcore.pretraining.
    mask_tokens`) unless a feature brings its own `labels`; a feature whose text
    already holds [MASK] tokens (prediction) is predicted at those tokens.
    Prediction: `{"masks": [{"position", "token", "token_id", "score", "candidates",
    "label"}, ...]}`, one entry per predicted position.
    """

    name = "mlm"
    description = "masked language model (built in; decoder tied to the word embeddings)"
    main_metric = "accuracy"
    greater_is_better = True

    def __init__(self, config: BertConfig, mlm_probability: float = 0.15, mask_prob: float = 0.8,
                 random_prob: float = 0.1, top_k: int = 5):
        super().__init__(config)
        self.mlm_probability, self.mask_prob, self.random_prob, self.top_k = \
            mlm_probability, mask_prob, random_prob, top_k
        self.transform = _Transform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.transform.dense.weight, std=config.initializer_range)
        nn.init.zeros_(self.transform.dense.bias)
        # Not submodules: the word embeddings belong to (and are saved with) the encoder.
        self.__dict__["_embeddings"] = None
        self.tokenizer = None         # set by `encode`; collate masks and decode names tokens with it
        self.generator = None         # a torch.Generator makes masking reproducible (evaluation)
        self.mask_fn = None           # override of bertcore.pretraining.mask_tokens

    def get_config(self) -> dict:
        return {"mlm_probability": self.mlm_probability, "mask_prob": self.mask_prob,
                "random_prob": self.random_prob, "top_k": self.top_k}

    def attach(self, encoder: nn.Module) -> None:
        embeddings = encoder.embeddings.word_embeddings
        if embeddings.weight.shape[0] != self.bias.shape[0]:
            raise ValueError(f"MLM head has vocab_size={self.bias.shape[0]}, the encoder's word embeddings "
                             f"have {embeddings.weight.shape[0]} rows; create the head with the encoder's config")
        self.__dict__["_embeddings"] = embeddings

    @property
    def decoder_weight(self) -> torch.Tensor:
        """(V, H): the tied decoder, i.e. the encoder's word embedding matrix."""
        if self._embeddings is None:
            raise RuntimeError("the MLM head is not attached to an encoder; put it in a "
                               "TaskModel(encoder, {'mlm': head}) (or call head.attach(encoder))")
        return self._embeddings.weight

    def load_pretrained_weights(self, cls_weights: dict[str, torch.Tensor]) -> bool:
        names = {"transform.dense.weight": ["transform.dense.weight"],
                 "transform.dense.bias": ["transform.dense.bias"],
                 "transform.LayerNorm.weight": ["transform.LayerNorm.weight", "transform.LayerNorm.gamma"],
                 "transform.LayerNorm.bias": ["transform.LayerNorm.bias", "transform.LayerNorm.beta"],
                 "bias": ["bias", "decoder.bias"]}
        return copy_pretrained_weights(self, cls_weights, "cls.predictions.", names)

    # ---- data --------------------------------------------------------------------

    def encode(self, example: dict, tokenizer, max_length: int = 512) -> list[dict]:
        self.tokenizer = tokenizer
        if "input_ids" in example:  # already tokenized (e.g. pretraining.make_nsp_pairs)
            ids = list(example["input_ids"])
            feature = {"input_ids": ids, "token_type_ids": list(example.get("token_type_ids", [0] * len(ids)))}
        else:
            enc = tokenizer(example["text"], example.get("text_pair"), max_length=max_length, truncation=True)
            feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
        if "labels" in example:
            feature["labels"] = list(example["labels"])
        return [feature]

    def collate(self, features: list[dict]) -> dict:
        batch = super().collate(features)
        mask_id = None if self.tokenizer is None else self.tokenizer.mask_token_id
        labels, predict = [], []
        to_mask = [i for i, f in enumerate(features) if "labels" not in f and mask_id not in f["input_ids"]]
        masked = dict(zip(to_mask, zip(*self._mask([features[i]["input_ids"] for i in to_mask])))) if to_mask else {}
        ids = []
        for i, f in enumerate(features):
            if i in masked:
                f_ids, f_labels = masked[i]
            else:
                f_ids, f_labels = f["input_ids"], f.get("labels", [IGNORE_INDEX] * len(f["input_ids"]))
            ids.extend(f_ids)
            labels.extend(f_labels)
            predict.extend(t == mask_id and "labels" not in f for t in f_ids)
        batch["input_ids"] = torch.tensor(ids, dtype=torch.long)
        batch["labels"] = torch.tensor(labels, dtype=torch.long)                 # (T,)
        wanted = (batch["labels"] != IGNORE_INDEX) | torch.tensor(predict, dtype=torch.bool)
        batch["mlm_positions"] = wanted.nonzero().flatten()                      # (M,)
        return batch

    def _mask(self, sequences: list[list[int]]):
        if self.tokenizer is None:
            raise RuntimeError("the MLM head masks with the tokenizer that `encode` saw; call head.encode "
                               "first, or give features precomputed `labels`")
        mask_fn = self.mask_fn
        if mask_fn is None:
            from .pretraining import mask_tokens as mask_fn
        return mask_fn(sequences, self.tokenizer, mlm_probability=self.mlm_probability,
                       mask_prob=self.mask_prob, random_prob=self.random_prob, generator=self.generator)

    # ---- model -------------------------------------------------------------------

    def forward(self, output: BertOutput, batch: dict) -> dict:
        hidden = output.last_hidden_state                                        # (T, H)
        positions = batch.get("mlm_positions")
        if positions is None and "labels" in batch:  # a batch from another collator
            positions = (batch["labels"] != IGNORE_INDEX).nonzero().flatten()
        if positions is None:
            positions = torch.arange(hidden.shape[0], device=hidden.device)
        positions = positions.to(hidden.device)
        h = self.transform(hidden.index_select(0, positions))                    # (M, H)
        logits = F.linear(h, self.decoder_weight, self.bias)                     # (M, V)
        return {"logits": logits, "positions": positions}

    def loss(self, logits: dict, batch: dict) -> torch.Tensor:
        labels = batch["labels"].to(logits["positions"].device)[logits["positions"]]  # (M,)
        if not (labels != IGNORE_INDEX).any():
            return logits["logits"].sum() * 0.0                                  # nothing picked
        return F.cross_entropy(logits["logits"].float(), labels, ignore_index=IGNORE_INDEX)

    # ---- results -----------------------------------------------------------------

    def split(self, logits: dict, batch: dict) -> list:
        positions = logits["positions"].cpu()
        probs = logits["logits"].detach().float().softmax(-1).cpu()             # (M, V)
        top_probs, top_ids = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)  # (M, k)
        cu_seqlens = batch["cu_seqlens"].cpu().long()
        seq = torch.searchsorted(cu_seqlens[1:], positions, right=True)          # (M,) feature of each
        labels = batch["labels"].cpu()[positions] if "labels" in batch else torch.full_like(positions, -100)
        out = []
        for i in range(cu_seqlens.numel() - 1):
            rows = (seq == i).nonzero().flatten()
            out.append({"positions": (positions[rows] - cu_seqlens[i]).tolist(), "top_ids": top_ids[rows].tolist(),
                        "top_probs": top_probs[rows].tolist(), "labels": labels[rows].tolist()})
        return out

    def decode(self, example: dict, features: list[dict], outputs: list) -> dict:
        out = outputs[0]
        token = (self.tokenizer.convert_ids_to_tokens if self.tokenizer is not None else str)
        masks = []
        for pos, ids, probs, label in zip(out["positions"], out["top_ids"], out["top_probs"], out["labels"]):
            masks.append({"position": pos, "token": token(ids[0]), "token_id": ids[0], "score": probs[0],
                          "candidates": [{"token": token(i), "token_id": i, "score": p} for i, p in zip(ids, probs)],
                          "label": None if label == IGNORE_INDEX else label})
        return {"masks": masks}

    def metrics(self, predictions: list, examples: list[dict]) -> dict[str, float]:
        scored = [m for p in predictions for m in p["masks"] if m["label"] is not None]
        correct = sum(m["token_id"] == m["label"] for m in scored)
        return {"accuracy": correct / len(scored) if scored else 0.0}


def copy_pretrained_weights(head: nn.Module, cls_weights: dict, prefix: str, names: dict[str, list[str]]) -> bool:
    """Copy `cls.*` tensors into `head` (own name -> candidate checkpoint names under `prefix`).
    Loads nothing unless every weight is there; a shape mismatch is an error naming the key."""
    own = head.state_dict()
    found = {}
    for key, candidates in names.items():
        hit = next((prefix + c for c in candidates if prefix + c in cls_weights), None)
        if hit is None:
            return False
        if cls_weights[hit].shape != own[key].shape:
            raise ValueError(f"checkpoint key {hit} has shape {tuple(cls_weights[hit].shape)}, "
                             f"the {head.name} head expects {tuple(own[key].shape)}")
        found[key] = cls_weights[hit]
    with torch.no_grad():
        for key, tensor in found.items():
            own[key].copy_(tensor)
    return True


@hookimpl
def register_heads(register):
    """Core registers its own heads the way a plugin does (entry point `mlm`)."""
    register(MLMHead)
