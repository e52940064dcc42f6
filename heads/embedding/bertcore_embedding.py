"""Sentence embedding head for bertcore: token vectors pooled into one vector per text
(mean, CLS, max, mean/sqrt(length), or several concatenated), optionally L2-normalised,
exactly as sentence-transformers computes them; fine-tuned on (anchor, positive) pairs
with in-batch negatives.

    model = bertcore_embedding.load("all-MiniLM-L6-v2/")   # pooling read from its ST files
    vectors = bertcore_embedding.encode(model, ["a text", ...], batch_size=32)   # (N, D) numpy
    model.predict(["a text"], head="embedding")            # [{"embedding": [...]}]
    create_head("embedding", cfg, pooling="mean", normalize=True)

A sentence-transformers checkpoint says how it pools in `modules.json` (Transformer →
Pooling → Normalize) and `1_Pooling/config.json`; `EmbeddingHead.options_from_checkpoint`
reads them, and `max_seq_length` and `do_lower_case` from `sentence_bert_config.json`
(beside modules.json, or in the Transformer module's folder, such as 0_Transformer/).

Training example: {"text": anchor, "text_pair": positive}. A pair is one feature: the
anchor is the feature's sequence and `collate_labels` appends the positives to the packed
batch, so one encoder pass covers 2B sequences and a pair never splits across batches
(the Trainer shuffles features). Loss: sentence-transformers' MultipleNegativesRankingLoss,
cross-entropy of scale · cos(anchor_i, positive_j) over every positive j of the batch,
target i (scale 20). Like any in-batch-negative loss it depends on the batch size.
Prediction: {"embedding": [...]} (pairs add "positive_embedding"). Metrics over the
evaluation set: `accuracy`, the fraction of anchors whose most similar positive among all
the set's positives is their own, and `mrr` (mean reciprocal rank of it).
"""
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertcore import Head, hookimpl
from bertcore.checkpoint import bert_folder, resolve_pretrained
from bertcore.heads import masked_mean, pack_features

BERTCORE_REQUIRES = ">=0.1,<0.2"
logger = logging.getLogger(__name__)


# sentence-transformers' pooling modes, in the order it concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")  # the pipelines this head reproduces


class EmbeddingHead(Head):
    name = "embedding"
    description = "sentence embeddings: mean/CLS/max pooling, normalised; pairs with in-batch negatives"
    main_metric = "accuracy"
    greater_is_better = True
    label_keys = ("num_pairs",)
    required_keys = ("text", "text_pair")

    def __init__(self, config, pooling="mean", normalize=True, scale=20.0, max_seq_length=None,
                 do_lower_case=False):
        super().__init__(config)
        modes = [pooling] if isinstance(pooling, str) else list(pooling)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise ValueError(f"pooling {pooling!r} is not supported; use one or several of {', '.join(POOLING_MODES)}")
        self.modes = [m for m in POOLING_MODES if m in modes]  # sentence-transformers' concatenation order
        for key, value in (("normalize", normalize), ("do_lower_case", do_lower_case)):
            if not isinstance(value, bool):   # bool("false") from a hand-edited head.json is True
                raise ValueError(f"{key}={value!r}; expected true or false")
        self.normalize, self.scale, self.max_seq_length = normalize, float(scale), max_seq_length
        self.do_lower_case = do_lower_case   # sentence-transformers lowercases the text before its tokenizer
        if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)):
            raise ValueError(f"max_seq_length={max_seq_length!r}; expected a whole number of tokens")
        if max_seq_length is not None and max_seq_length < 2:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for [CLS] and [SEP]; use 2 or more")

    @property
    def dimension(self) -> int:
        return self.config.hidden_size * len(self.modes)

    def get_config(self):
        return {"pooling": self.modes[0] if len(self.modes) == 1 else self.modes, "normalize": self.normalize,
                "scale": self.scale, "max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}

    @classmethod
    def options_from_checkpoint(cls, directory) -> dict:
        """Head options from a sentence-transformers checkpoint folder or cached Hub name
        (pooling, normalize, max_seq_length, do_lower_case); {} when it has no modules.json
        (a plain BERT checkpoint)."""
        # the folder BertEncoder.from_pretrained reads, so a Hub name keeps its ST files
        directory = resolve_pretrained(directory)
        if not (directory / "modules.json").is_file():
            return {}
        modules = _read_json(directory / "modules.json")
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        other = [k for k in kinds if k not in _ST_MODULES]
        if other or "Pooling" not in kinds:
            raise ValueError(f"{directory / 'modules.json'} lists {', '.join(other) or 'no Pooling'}; the embedding "
                             f"head reproduces Transformer → Pooling → Normalize pipelines only")
        pooling_dir = directory / modules[kinds.index("Pooling")].get("path", "1_Pooling")
        options = {"pooling": pooling_from_config(_read_json(pooling_dir / "config.json"), pooling_dir),
                   "normalize": "Normalize" in kinds}
        for folder in (directory, bert_folder(directory)):   # the older layout keeps it in 0_Transformer/
            if (folder / "sentence_bert_config.json").is_file():
                settings = _read_json(folder / "sentence_bert_config.json")
                if settings.get("max_seq_length") is not None:
                    options["max_seq_length"] = int(settings["max_seq_length"])
                if settings.get("do_lower_case"):
                    options["do_lower_case"] = True
                break
        return options

    # ---- data ----------------------------------------------------------------------

    def check_example(self, example):
        super().check_example(example)
        for key in ("text", "text_pair"):
            if not isinstance(example[key], str):
                raise ValueError(f"{key} is {type(example[key]).__name__} {example[key]!r}; expected a string")

    def encode(self, example, tokenizer, max_length=512):
        limit = min(max_length, self.max_seq_length or max_length)
        self.require_text(example, "text", "text_pair", optional=("text_pair",))
        case = str.lower if self.do_lower_case else str
        enc = tokenizer(case(example["text"]), max_length=limit, truncation=True)
        feature = {"input_ids": enc["input_ids"][0], "token_type_ids": enc["token_type_ids"][0]}
        if example.get("text_pair") is not None:
            pos = tokenizer(case(example["text_pair"]), max_length=limit, truncation=True)
            feature["positive_input_ids"], feature["positive_token_type_ids"] = \
                pos["input_ids"][0], pos["token_type_ids"][0]
        return [feature]

    def collate_labels(self, features, batch):
        """Pairs: the B positives are packed after the B anchors (2B sequences in one
        encoder pass), and `num_pairs` = B says where they start."""
        if not features or not all("positive_input_ids" in f for f in features):
            return {}
        positives = pack_features([{"input_ids": f["positive_input_ids"],
                                    "token_type_ids": f["positive_token_type_ids"]} for f in features])
        offset = batch["cu_seqlens"][-1]
        return {"input_ids": torch.cat([batch["input_ids"], positives["input_ids"]]),             # (T + T',)
                "token_type_ids": torch.cat([batch["token_type_ids"], positives["token_type_ids"]]),
                "cu_seqlens": torch.cat([batch["cu_seqlens"], positives["cu_seqlens"][1:] + offset]),  # (2B+1,)
                "max_seqlen": max(batch["max_seqlen"], positives["max_seqlen"]),
                "num_pairs": len(features)}

    # ---- model ---------------------------------------------------------------------

    def forward(self, output, batch):
        hidden, mask = self.token_vectors(output, batch)                       # (N, L, H), (N, L)
        embeddings = pool(hidden, mask, self.modes)                            # (N, D)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    def loss(self, logits, batch):
        n = batch["num_pairs"]
        if n < 2 and self.training and not getattr(self, "_said_one_pair", False):
            self._said_one_pair = True   # once: an epoch's last batch may hold one pair
            logger.warning("a training batch of one pair has no in-batch negatives, so it teaches the embedding "
                           "head nothing (loss 0); use batch_size 2 or more (bigger gives more negatives)")
        anchors = F.normalize(logits[:n].float(), p=2, dim=-1)                 # (B, D)
        positives = F.normalize(logits[n:2 * n].float(), p=2, dim=-1)          # (B, D)
        scores = self.scale * anchors @ positives.T                            # (B, B): the diagonal is right
        return F.cross_entropy(scores, torch.arange(n, device=scores.device))

    def loss_count(self, batch):
        return batch["num_pairs"] if batch["num_pairs"] > 1 else 0   # one pair: no negatives, no loss to weigh

    # ---- results -------------------------------------------------------------------

    def split(self, logits, batch):
        rows = logits.detach().float().cpu()
        n = batch.get("num_pairs")
        if n is None:
            return list(rows)
        return [{"embedding": a, "positive": p} for a, p in zip(rows[:n], rows[n:2 * n])]

    def decode(self, example, features, outputs):
        out = outputs[0]
        if isinstance(out, dict):
            return {"embedding": out["embedding"].tolist(), "positive_embedding": out["positive"].tolist()}
        return {"embedding": out.tolist()}

    def metrics(self, predictions, examples):
        if not predictions or any("positive_embedding" not in p for p in predictions):
            raise ValueError("embedding metrics need (text, text_pair) examples: each anchor is scored on finding "
                             "its own positive")
        anchors = F.normalize(torch.tensor([p["embedding"] for p in predictions]), dim=-1)           # (N, D)
        positives = F.normalize(torch.tensor([p["positive_embedding"] for p in predictions]), dim=-1)  # (N, D)
        sims = anchors @ positives.T                                            # (N, N)
        own = sims.diagonal()[:, None]                                          # (N, 1)
        rank = 1 + (sims > own).sum(1)                                          # (N,) ties count for the anchor
        return {"accuracy": float((rank == 1).float().mean()), "mrr": float((1.0 / rank).mean())}


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes) -> torch.Tensor:
    """sentence-transformers' Pooling: (N, L, H) token vectors and an (N, L) bool mask of
    real tokens → (N, H · len(modes)), the modes concatenated in POOLING_MODES order."""
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[:, 0])                                           # (N, H)
        elif mode == "max":
            out.append(hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1))
        elif mode == "mean":
            out.append(masked_mean(hidden, mask))                              # (N, H)
        else:  # mean_sqrt_len_tokens
            weights = mask.unsqueeze(-1).to(hidden.dtype)                      # (N, L, 1)
            out.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9).sqrt())  # (N, H)
    return torch.cat(out, dim=-1)                                              # (N, D)


def pooling_from_config(config: dict, where) -> str | list[str]:
    """The pooling modes of a sentence-transformers `1_Pooling/config.json`: its
    `pooling_mode` (str or list), or the older `pooling_mode_*_tokens` flags."""
    if "pooling_mode" in config:
        modes = [config["pooling_mode"]] if isinstance(config["pooling_mode"], str) else list(config["pooling_mode"])
    else:
        modes = [mode for key, mode in _LEGACY_KEYS.items() if config.get(key)]
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if not modes or unsupported:
        raise ValueError(f"{where}/config.json asks for pooling {unsupported or 'none'}; the embedding head "
                         f"implements {', '.join(POOLING_MODES)}")
    return modes[0] if len(modes) == 1 else modes


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing; the sentence-transformers checkpoint is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None


# ---- convenience: a checkpoint folder in, vectors out -------------------------------------

def load(directory, device=None, **options):
    """A TaskModel (head "embedding") from a BERT or sentence-transformers checkpoint folder
    (or cached Hub name): its encoder, its tokenizer, and the pooling its ST files name
    (`options` override them)."""
    import bertcore

    directory = resolve_pretrained(directory)
    encoder = bertcore.BertEncoder.from_pretrained(directory)
    head = EmbeddingHead(encoder.config, **{**EmbeddingHead.options_from_checkpoint(directory), **options})
    model = bertcore.TaskModel(encoder, {"embedding": head}, tokenizer=bertcore.Tokenizer.from_pretrained(directory))
    return model.to(device) if device is not None else model


def encode(model, texts, batch_size: int = 32, head: str | None = None, max_length: int | None = None) -> np.ndarray:
    """Embeddings of `texts` (a str or a list) as a float32 array (N, D) (or (D,) for one
    str), as `SentenceTransformer.encode` returns them; through the TaskModel's run path."""
    single = isinstance(texts, str)
    predictions = model.predict([texts] if single else list(texts), head=head, batch_size=batch_size,
                                max_length=max_length)
    vectors = np.asarray([p["embedding"] for p in predictions], dtype=np.float32)
    if not single and not len(vectors):
        name = model.head_names(head)[0]
        return np.zeros((0, model.heads[name].dimension), dtype=np.float32)
    return vectors[0] if single else vectors


@hookimpl
def register_heads(register):
    register(EmbeddingHead)
