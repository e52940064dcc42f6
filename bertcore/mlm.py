"""The built-in masked-LM head: BERT's `cls.predictions`, registered as head "mlm".

Core registers this module as a plugin through its own entry point
(`mlm = "bertcore.mlm"` in pyproject.toml), the same way a third party would.
"""
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig
from .heads import Head, copy_pretrained_weights
from .hookspecs import hookimpl
from .masking import IGNORE_INDEX, mask_tokens
from .model import BertOutput, activation


class _Transform(nn.Module):
    """dense → activation → LayerNorm, as HF's `cls.predictions.transform`."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))                        # (M, H)


class MLMHead(Head):
    """Masked language model: transform, then a decoder tied to the encoder's word
    embeddings plus its own bias (BERT's `cls.predictions`).

    Batch keys: `labels` (T,) packed, the original id at picked tokens and -100
    elsewhere, and `mlm_positions` (M,) the packed indices to predict. Vocabulary
    logits are computed at those M positions only, never at all T tokens.

    Masking happens when a batch is collated (`bertcore.masking.mask_tokens`), unless
    a feature brings its own `labels`: in training mode fresh masks every batch from
    torch's global RNG (dynamic masking, as RoBERTa); in eval mode each feature's masks
    are a function of its own tokens, so evaluation is the same whatever the batch
    size or order. `whole_word=True` picks a word's pieces together (`##` continuations,
    or a feature's own `word_starts`). A feature whose text already holds [MASK]
    tokens (prediction) is predicted at those tokens.

    Prediction: `{"masks": [{"position", "token", "token_id", "score", "candidates",
    "label"}, ...]}`, one entry per predicted position. Metric: accuracy at the
    picked positions.
    """

    name = "mlm"
    description = "masked language model (built in; decoder tied to the word embeddings)"
    main_metric = "accuracy"
    greater_is_better = True
    required_keys = ("text",)
    token_labels = True

    def __init__(self, config: BertConfig, mlm_probability: float = 0.15, mask_prob: float = 0.8,
                 random_prob: float = 0.1, top_k: int = 5, whole_word: bool = False):
        super().__init__(config)
        if not (0.0 <= mlm_probability <= 1.0 and 0.0 <= mask_prob and 0.0 <= random_prob
                and mask_prob + random_prob <= 1.0):          # refused here, not at the first batch
            raise ValueError(f"the mlm head needs 0 <= mlm_probability <= 1 and mask_prob + random_prob <= 1 "
                             f"(both >= 0), got {mlm_probability}, {mask_prob}, {random_prob}")
        self.mlm_probability, self.mask_prob, self.random_prob, self.top_k, self.whole_word = \
            mlm_probability, mask_prob, random_prob, top_k, whole_word
        self.transform = _Transform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.init_linear(self.transform.dense, config)
        # Not submodules: the word embeddings belong to (and are saved with) the encoder.
        self.__dict__["_embeddings"] = None
        self.tokenizer = None         # set by `prepare`: masking and decoding need its ids

    def get_config(self) -> dict:
        return {"mlm_probability": self.mlm_probability, "mask_prob": self.mask_prob,
                "random_prob": self.random_prob, "top_k": self.top_k, "whole_word": self.whole_word}

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

    @classmethod
    def options_from_transformers(cls, config):
        return {} if "BertForMaskedLM" in (config.get("architectures") or []) else None

    def transformers_export(self) -> dict:
        """This head as transformers' BertForMaskedLM (`bertcore.export`): `cls.predictions.*`,
        no pooler. The decoder is the word embedding matrix (tie_word_embeddings): written
        once, as `bert.embeddings.word_embeddings.weight`, as transformers' own save_pretrained
        does (a second copy was vocab x hidden more, 94 MB on BERT-base)."""
        return {"architecture": "BertForMaskedLM", "pooler": False, "config": {"tie_word_embeddings": True},
                "state_dict": {"cls.predictions.transform.dense.weight": self.transform.dense.weight,
                               "cls.predictions.transform.dense.bias": self.transform.dense.bias,
                               "cls.predictions.transform.LayerNorm.weight": self.transform.LayerNorm.weight,
                               "cls.predictions.transform.LayerNorm.bias": self.transform.LayerNorm.bias,
                               "cls.predictions.bias": self.bias}}

    # ---- data --------------------------------------------------------------------

    def prepare(self, tokenizer, train_examples=None) -> None:
        self.tokenizer = tokenizer

    def check_example(self, example: dict) -> None:
        if "input_ids" not in example:  # pretokenized pairs (make_nsp_pairs) need no text
            super().check_example(example)

    def encode(self, example: dict, tokenizer, max_length: int = 512) -> list[dict]:
        if "input_ids" in example:  # already tokenized (e.g. masking.make_nsp_pairs)
            ids = list(example["input_ids"])
            feature = {"input_ids": ids, "token_type_ids": list(example.get("token_type_ids", [0] * len(ids)))}
        else:
            enc = tokenizer(example["text"], example.get("text_pair"), max_length=max_length, truncation=True)
            feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
            given = sum(str(example.get(k) or "").count(tokenizer.mask_token) for k in ("text", "text_pair"))
            kept = feature["input_ids"].count(tokenizer.mask_token_id)
            if kept < given:   # cut off: the rest of the text would be masked at random, predicted in their place
                raise ValueError(f"{given - kept} of the text's {given} {tokenizer.mask_token} lie past "
                                 f"max_length={max_length} tokens; shorten the text or raise max_length")
        for key in ("labels", "word_starts"):
            if key in example:
                feature[key] = list(example[key])
        return [feature]

    def collate_labels(self, features: list[dict], batch: dict) -> dict:
        mask_id = None if self.tokenizer is None else self.tokenizer.mask_token_id
        ids, labels, predict = [], [], []
        for f, (f_ids, f_labels) in zip(features, self._masked(features, mask_id)):
            ids.extend(f_ids)
            labels.extend(f_labels)
            predict.extend(t == mask_id and "labels" not in f for t in f_ids)
        labels = torch.tensor(labels, dtype=torch.long)                         # (T,)
        wanted = (labels != IGNORE_INDEX) | torch.tensor(predict, dtype=torch.bool)
        return {"input_ids": torch.tensor(ids, dtype=torch.long),               # (T,) masked
                "labels": labels, "mlm_positions": wanted.nonzero().flatten()}  # (M,)

    def _masked(self, features: list[dict], mask_id) -> list[tuple[list, list]]:
        """(ids, labels) per feature: given labels kept, texts with [MASK] kept for
        prediction, the rest masked here."""
        out = [(f["input_ids"], f["labels"]) if "labels" in f
               else (f["input_ids"], [IGNORE_INDEX] * len(f["input_ids"])) for f in features]
        todo = [i for i, f in enumerate(features) if "labels" not in f and mask_id not in f["input_ids"]]
        if not todo:
            return out
        if self.tokenizer is None:
            raise RuntimeError("the MLM head masks with the tokenizer's ids; call head.prepare(tokenizer) "
                               "first (TaskModel and Trainer do), or give features precomputed `labels`")
        if self.training:       # one draw for the whole batch from the global RNG
            groups = [todo]
        else:                   # each feature from its own tokens: the same in every batch
            groups = [[i] for i in todo]
        for group in groups:
            generator = None if self.training else _generator_for(features[group[0]]["input_ids"])
            starts = None
            if self.whole_word and all("word_starts" in features[i] for i in group):
                starts = [features[i]["word_starts"] for i in group]
            ids, labels = mask_tokens([features[i]["input_ids"] for i in group], self.tokenizer,
                                      mlm_probability=self.mlm_probability, mask_prob=self.mask_prob,
                                      random_prob=self.random_prob, generator=generator,
                                      whole_word=self.whole_word, word_starts=starts)
            for i, f_ids, f_labels in zip(group, ids, labels):
                out[i] = (f_ids, f_labels)
        return out

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
        scores = logits["logits"].detach().float().cpu()                          # (M, V)
        if self.tokenizer is not None and scores.shape[-1] > len(self.tokenizer):
            # an encoder vocabulary padded past the tokenizer's (or another tokenizer's): ids no
            # token has are never a prediction (they failed to decode)
            scores[:, len(self.tokenizer):] = float("-inf")
        probs = scores.softmax(-1)                                                # (M, V)
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


def _generator_for(ids: list[int]) -> torch.Generator:
    """A generator seeded by a feature's tokens (evaluation masks that never change)."""
    return torch.Generator().manual_seed(zlib.crc32(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()))


@hookimpl
def register_heads(register):
    """Core registers its own heads the way a plugin does (entry point `mlm`)."""
    register(MLMHead)
