"""TaskModel: one encoder shared by named heads, and THE run path through them.

    model = TaskModel(encoder, {"sentiment": create_head("classification", cfg, labels=[...])},
                      tokenizer=tok)
    batch = model.collate(features, head="sentiment")  # tokens packed once, labels per head
    logits = model(batch, head="sentiment")            # encoder once, then the head
    loss = model.loss(batch, head="sentiment")
    model.predict(["great film"], head="sentiment")    # [{"label": "pos", "score": 0.97, ...}]
    model.save_pretrained("out/model")

Training (the Trainer, under DDP too), evaluation and prediction all go through
`encode` → `collate` → `forward` → `compute_loss` / `run`; nothing else calls the
encoder with heads.

Saved layout:

    out/model/taskmodel.json          head names in order, bertcore version
    out/model/encoder/                config.json + model.safetensors (HF BertModel layout)
    out/model/tokenizer/              when the model has a tokenizer
    out/model/heads/<name>/head.json  head type, plugin distribution + version, hidden size, kwargs
    out/model/heads/<name>/head.safetensors
"""
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import cudagraphs, plugins
from .buckets import SEQLEN_BUCKETS, Buckets, pad_batch, real_batch, unpad_outputs
from .checkpoint import (CheckpointError, file_sha256, load_encoder, load_weights, read_state_dict, resolve_device,
                         resolve_dtype)
from .data import where
from .files import file_above, folder_swap, recover_folder, save_tensors, write_json
from .heads import Head, HeadInfo, not_implemented, pack_features
from .model import BertEncoder

logger = logging.getLogger(__name__)

MODEL_FILE = "taskmodel.json"
HEAD_CONFIG = "head.json"
HEAD_WEIGHTS = "head.safetensors"
SAVED_ENTRIES = {MODEL_FILE, "encoder", "tokenizer", "heads"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Encoded:
    """Examples encoded for one or more heads that share batches: the features in
    order and, for each, the index of the example it came from (QA windows: several)."""

    heads: tuple[str, ...]
    examples: Sequence[dict]
    features: list[dict]
    owner: list[int]


@dataclass
class RunResult:
    """One head's results over a dataset: decoded predictions (None when the head
    cannot decode), the mean loss per unit of `Head.loss_count` (NaN without labels) and
    how many units it averages (0: no label to score, e.g. no token masked for MLM)."""

    predictions: list | None
    loss: float
    units: int = 0


class TaskModel(nn.Module):
    """An encoder and a dict of named heads (several at once: MLM + NSP, two
    classification tasks, ...). Heads of an HF pretraining checkpoint (`cls.*`)
    are loaded into fresh MLM/NSP heads unless `load_pretrained_heads=False`.

    On a GPU, `run` (prediction, evaluation) replays the forward from a CUDA graph per
    batch bucket (see `bertcore.cudagraphs`); set `model.cuda_graphs = False` to run it
    eagerly."""

    cuda_graphs: bool = True

    def __init__(self, encoder: BertEncoder, heads: dict[str, Head], tokenizer=None,
                 load_pretrained_heads: bool = True):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self.tokenizer = tokenizer
        if not isinstance(heads, Mapping):  # a list would fail on .items() without saying what to pass
            raise TypeError(f"heads is a {type(heads).__name__}; pass a dict of name -> head, "
                            "e.g. {\"sentiment\": create_head(\"classification\", encoder.config, labels=[...])}")
        for name, head in heads.items():
            self.add_head(name, head, load_pretrained=load_pretrained_heads)

    @property
    def tokenizer(self):
        return self._tokenizer_now

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        # Checked here, not at the first text that hits a missing row: a tokenizer with more
        # ids than the encoder has embeddings trains and saves, then fails on some inputs.
        rows = self.encoder.config.vocab_size
        if tok is not None and tok.vocab_size > rows:
            raise ValueError(f"the tokenizer {getattr(tok, 'source', '')} has {tok.vocab_size} ids but the encoder "
                             f"has vocab_size={rows} embeddings; use the tokenizer the encoder was trained with")
        self._tokenizer_now = tok

    def add_head(self, name: str, head: Head, load_pretrained: bool = True) -> Head:
        """Attach `head` under `name`; its hidden size must equal the encoder's."""
        if not _folder_name(name):
            raise ValueError(f"head name {name!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
        if not isinstance(head, Head):
            raise TypeError(f"head {name!r} is a {type(head).__name__}, not a bertcore.Head; "
                            "make one with bertcore.create_head(...)")
        if name in self.heads:  # replacing would drop a trained head without a word
            raise ValueError(f"this model already has a head named {name!r}; attach it under another name "
                             f"(load_head(path, name=...) for a saved one), or remove the old one first "
                             f"(del model.heads[{name!r}])")
        _check_hidden(head.config.hidden_size, self.encoder.config.hidden_size, f"head {name!r}")
        _check_head_config(name, head)
        head.attach(self.encoder)
        if load_pretrained and self.encoder.pretrained_head_weights:
            head.load_pretrained_weights(self.encoder.pretrained_head_weights)
        # the encoder's dtype too: a float32 head on a bf16 encoder fails at its first matmul
        dtype = next(self.encoder.parameters()).dtype
        self.heads[name] = head.to(self.device, dtype) if dtype.is_floating_point else head.to(self.device)
        return head

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def head_names(self, head=None) -> tuple[str, ...]:
        """`head` (a name, a list of names, or None for the only head) as a checked tuple."""
        if head is None:
            if len(self.heads) != 1:
                raise ValueError(f"this model has heads {list(self.heads)}; pass head=NAME")
            return tuple(self.heads)
        names = (head,) if isinstance(head, str) else tuple(head)
        for n in names:
            if n not in self.heads:
                raise KeyError(f"no head named {n!r}; this model has {list(self.heads)}")
        return names

    def _one_head(self, head, what: str) -> str:
        """The one head `what` (predict, evaluate) runs: a list took its first head silently."""
        if head is not None and not isinstance(head, str):
            raise TypeError(f"{what} runs one head; got head={head!r}: call it once per head")
        return self.head_names(head)[0]

    # ---- data ----------------------------------------------------------------------

    def prepare(self, head=None, tokenizer=None, train_examples=None) -> None:
        """Let the named heads set what they need from the tokenizer (and, for training,
        the training examples) before anything is encoded; see `Head.prepare`."""
        tok = self._tokenizer(tokenizer)
        for name in self.head_names(head):
            self.heads[name].prepare(tok, train_examples)

    def encode(self, examples: Sequence[dict], head=None, tokenizer=None, max_length: int | None = None) -> Encoded:
        """Every example's features for the named heads. Heads that share batches (MLM +
        NSP) each encode the example and their features are merged, so every head finds
        its label keys."""
        names, tok = self.head_names(head), self._tokenizer(tokenizer)
        if max_length is not None:
            check_text_room(max_length, default=" (None: the encoder's max_position_embeddings, at most 512)")
        # past the encoder's positions a sequence cannot run: cut it there, as the default does
        max_length = min(max_length or 512, self.encoder.config.max_position_embeddings)
        features, owner = [], []
        for i in range(len(examples)):
            per_head = []
            for name in names:
                try:
                    per_head.append(self.heads[name].encode(examples[i], tok, max_length))
                except KeyError as err:  # an input without a key the head reads (predict skips check_example)
                    if not isinstance(examples[i], dict) or err.args[0] in examples[i]:
                        raise
                    raise ValueError(f"example {i + 1} has no {err.args[0]!r} (it has "
                                     f"{', '.join(map(str, examples[i])) or 'nothing'}); the {' and '.join(names)} "
                                     "head reads it") from None
                except TypeError as err:  # a field of the wrong type (a JSON null for a text), or the plugin's slip
                    if not isinstance(examples[i], dict):
                        raise
                    raise ValueError(f"example {i + 1} cannot be read by the {name} head's encode(): {err} (a field "
                                     "of the wrong type, or a bug in the head's plugin)") from None
                except ValueError as err:  # a head's own check (an answer that makes no token): which example
                    raise ValueError(f"example {i + 1}: {err}") from None
                _check_features(per_head[-1], name, i)
            merged = per_head[0]
            for other in per_head[1:]:
                if len(other) != len(merged):
                    raise ValueError(f"heads {names} make different numbers of features from one example; "
                                     "heads that share batches must encode alike")
                merged = [{**b, **a} for a, b in zip(merged, other)]
            features.extend(merged)
            owner.extend([i] * len(merged))
        return Encoded(names, examples, features, owner)

    def collate(self, features: list[dict], head=None, buckets: Buckets | None = None) -> dict:
        """One batch for the named heads: the tokens packed once, then each head's labels
        (`Head.collate_labels`). Two heads may not set the same label key.

        With `buckets` (see `bertcore.buckets`), a batch whose labels can be padded is
        padded to its bucket's static shape (it then carries `num_sequences`); one whose
        labels cannot (float targets, a head's extra keys such as MLM's masked ids) comes
        back as it is."""
        batch = pack_features(features)
        owners: dict[str, str] = {}
        for name in self.head_names(head):
            for key, value in self.heads[name].collate_labels(features, batch).items():
                if key in owners:
                    raise ValueError(f"heads {owners[key]!r} and {name!r} both put {key!r} in the batch; "
                                     "train them on separate data")
                owners[key] = name
                batch[key] = value
        if self.device.type != "cpu":  # the encoder checks token values on host tensors only
            self.encoder.check_token_values(batch["input_ids"], batch.get("token_type_ids"))
        return self._bucketed(batch, owners, buckets) if buckets is not None else batch

    def buckets(self, batch_size: int) -> Buckets:
        """Buckets for batches of up to `batch_size` features, no longer than the encoder's
        positions allow."""
        most = self.encoder.config.max_position_embeddings
        return Buckets(batch_size, tuple(s for s in SEQLEN_BUCKETS if s < most) + (most,))

    def _bucketed(self, batch: dict, owners: dict[str, str], buckets: Buckets) -> dict:
        """`batch` padded to its bucket, or as it is when a label cannot be padded with
        IGNORE_INDEX (only integer tensors under a head's own `label_keys` can)."""
        sequence_keys, token_keys = [], []
        for key, name in owners.items():
            head, value = self.heads[name], batch[key]
            if key not in head.label_keys or not isinstance(value, torch.Tensor) \
                    or value.dtype.is_floating_point or value.dtype == torch.bool:
                return batch
            (token_keys if head.token_labels else sequence_keys).append(key)
        offsets = batch["cu_seqlens"].tolist()
        shape = buckets.shape([b - a for a, b in zip(offsets, offsets[1:])])
        return pad_batch(batch, shape, sequence_keys, token_keys, self.encoder.config.pad_token_id)

    def _tokenizer(self, tokenizer):
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise ValueError("this TaskModel has no tokenizer; build it with TaskModel(encoder, heads, "
                             "tokenizer=bertcore.Tokenizer.from_pretrained(...)) or pass tokenizer=")
        return tok

    # ---- running -------------------------------------------------------------------

    def forward(self, batch: dict, head: str | list[str] | None = None):
        """Encode a packed batch once and run the named head on it: its logits, or a dict
        name -> logits when `head` is a list (e.g. ["mlm", "nsp"] in pretraining)."""
        names = self.head_names(head)
        batch = to_device(batch, self.device)
        out = self.encoder(batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                           position_ids=batch.get("position_ids"), cu_seqlens=batch["cu_seqlens"],
                           max_seqlen=batch["max_seqlen"])
        logits = {n: self.heads[n](out, batch) for n in names}
        return logits[names[0]] if isinstance(head, str) or head is None else logits

    def compute_loss(self, logits: dict, batch: dict, weights: dict | None = None) -> torch.Tensor:
        """Σ weight × loss over the heads in `logits` (name -> logits) whose labels the
        batch carries. Separate from `forward` so a DDP wrapper can run the forward."""
        batch = to_device(batch, self.device)
        weights = weights or {}
        losses = [weights.get(n, 1.0) * self.head_loss(n, out, batch)
                  for n, out in logits.items() if self.heads[n].has_labels(batch)]
        if not losses:
            raise ValueError(f"the batch carries no labels for heads {list(logits)}")
        return sum(losses)

    def head_loss(self, name: str, logits, batch: dict) -> torch.Tensor:
        """The named head's `loss`, checked to be what the Trainer can step on: a scalar tensor."""
        loss = self.heads[name].loss(logits, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
            raise TypeError(f"head {name!r} ({self.heads[name].name}): loss() returned {got}; it must return a "
                            "scalar tensor, the mean over loss_count(batch) units (e.g. F.cross_entropy's default)")
        return loss

    def loss(self, batch: dict, head: str | list[str] | None = None, weights: dict | None = None) -> torch.Tensor:
        """Weighted sum of the named heads' losses on one batch (one encoder pass)."""
        return self.compute_loss(self(batch, head=list(self.head_names(head))), batch, weights)

    @torch.no_grad()
    def run(self, data: Encoded, batch_size: int = 32, with_loss: bool = True,
            decode: bool = True) -> dict[str, RunResult]:
        """Run every feature of `data` through its heads in order, in eval mode: per head,
        the decoded predictions and the mean loss per unit (`Head.loss_count`), which is
        the same whatever `batch_size` is."""
        _check_batch_size(batch_size)
        was_training = self.training
        self.eval()
        outputs = {n: [] for n in data.heads}
        totals = {n: [0.0, 0] for n in data.heads}
        try:
            graphs = self.cuda_graphs and cudagraphs.usable(self.device)
            buckets = self.buckets(batch_size) if graphs else None
            for start in range(0, len(data.features), batch_size):
                batch = self.collate(data.features[start:start + batch_size], data.heads, buckets)
                logits, batch = self._run_forward(batch, data.heads)
                for name in data.heads:
                    head = self.heads[name]
                    if with_loss and head.has_labels(batch):
                        count = head.loss_count(batch)
                        if count:
                            totals[name][0] += float(self.head_loss(name, logits[name], batch)) * count
                            totals[name][1] += count
                    outputs[name].extend(head.split(logits[name], batch))
        finally:
            self.train(was_training)
        results = {}
        for name in data.heads:
            predictions = self._decode(name, data, outputs[name]) if decode else None
            total, count = totals[name]
            results[name] = RunResult(predictions, total / count if count else float("nan"), count)
        return results

    def _run_forward(self, batch: dict, heads: tuple[str, ...]) -> tuple:
        """(the heads' logits, the real batch on the device) for one collated batch in eval
        mode. A bucketed batch is replayed from its bucket's CUDA graph, and both are cut
        back to the real sequences, so heads' `loss`, `loss_count` and `split` see the
        batch they would without buckets."""
        if "num_sequences" in batch:
            logits = unpad_outputs(cudagraphs.forward_of(self)(to_device(batch, self.device), heads), batch)
            return logits, to_device(real_batch(batch), self.device)
        batch = to_device(batch, self.device)
        return self(batch, head=list(heads)), batch

    def _decode(self, name: str, data: Encoded, outputs: list) -> list | None:
        grouped = [([], []) for _ in range(len(data.examples))]
        for feature, out, i in zip(data.features, outputs, data.owner):
            grouped[i][0].append(feature)
            grouped[i][1].append(out)
        head = self.heads[name]
        if type(head).decode is Head.decode:   # no predictions (metrics then have none to score)
            return None
        return [head.decode(data.examples[i], fs, outs) for i, (fs, outs) in enumerate(grouped)]

    def predict(self, inputs, head: str | None = None, batch_size: int = 32, max_length: int | None = None,
                tokenizer=None):
        """Decoded predictions: one for a single input (str, (text, pair) tuple, or example
        dict), a list for a list or any other iterator (so one NER word list goes in as a
        tuple). What one prediction looks like is up to the head's `decode`. Windows are
        `max_length` tokens at most, never past the encoder's `max_position_embeddings`:
        QA and NER read a longer text in overlapping windows, the other heads cut it."""
        name = self._one_head(head, "predict")
        if isinstance(inputs, Iterator):  # a generator, map(...): a batch, as a list is
            inputs = list(inputs)
        single = not isinstance(inputs, list)
        examples = [self.heads[name].example_from_input(inputs)] if single else self._examples(name, inputs)
        self.prepare(name, tokenizer)
        data = self.encode(examples, name, tokenizer, max_length)
        predictions = self.run(data, batch_size, with_loss=False)[name].predictions
        if predictions is None:
            raise not_implemented(self.heads[name], "decode")
        return predictions[0] if single else predictions

    def _examples(self, name: str, inputs: list) -> list[dict]:
        """The head's examples of a list of predict inputs; one it cannot read is named by its place."""
        examples = []
        for i, item in enumerate(inputs):
            try:
                examples.append(self.heads[name].example_from_input(item))
            except TypeError as err:
                raise TypeError(f"input {i + 1} of {len(inputs)}: {err}") from None
        return examples

    def evaluate(self, examples: Sequence[dict], head: str | None = None, batch_size: int = 32,
                 max_length: int | None = None, tokenizer=None) -> dict[str, float]:
        """The head's metrics on labelled examples, plus `loss`: the mean per unit of the
        head's loss (per sequence, or per labelled token for token-level heads), the same
        number from `Trainer.evaluate` and for any batch size (none where nothing was labelled)."""
        name = self._one_head(head, "evaluate")
        self._check_examples(name, examples)
        self.prepare(name, tokenizer)
        result = self.run(self.encode(examples, name, tokenizer, max_length), batch_size)[name]
        metrics = self.heads[name].metrics(result.predictions, examples) if result.predictions is not None else {}
        # no loss where nothing was labelled (no token masked), as Trainer.evaluate: not a NaN that reads as diverged
        return {**({"loss": result.loss} if result.units else {}), **metrics}

    def _check_examples(self, name: str, examples: Sequence[dict]) -> None:
        """Every labelled example checked by its head, as the Trainer does: one that is not (a NaN
        target, a tag list of the wrong length) would score as a silent NaN, or fail deep inside."""
        if not len(examples):
            raise ValueError(f"no examples to evaluate; pass labelled examples for the {name} head")
        for i in range(len(examples)):
            try:
                self.heads[name].check_example(examples[i])
            except ValueError as err:
                raise ValueError(f"{where(examples, i)}: {err}") from None

    # ---- saving ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, save_encoder: bool = True) -> Path:
        """Write encoder/, tokenizer/ and heads/<name>/ (see the module docstring). The
        folder is built beside `directory` and swapped in whole, so a crash leaves the
        old model or the new one, never a mix.

        `save_encoder=False` (a frozen encoder loaded from a folder) writes no encoder/:
        taskmodel.json points at the encoder's weights file by path and SHA-256, and
        `from_pretrained` loads it from there after checking the hash."""
        directory = Path(directory)
        _check_replaceable(directory)
        info = {"heads": list(self.heads), "bertcore_version": plugins.core_version()}
        if not save_encoder:
            info["encoder"] = self.encoder_reference()
            _check_outside(Path(info["encoder"]["path"]), directory)
        with folder_swap(directory) as tmp:
            if save_encoder:
                self.encoder.save_pretrained(tmp / "encoder")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer", self.encoder.config.max_position_embeddings)
            for name, head in self.heads.items():
                save_head(head, tmp / "heads" / name, name)
            write_json(tmp / MODEL_FILE, info)
        return directory

    def encoder_reference(self) -> dict:
        """{"path", "sha256"} of the weights file the encoder was loaded from (hashed once)."""
        source = getattr(self.encoder, "source", None)
        if source is None or not Path(source).is_file():
            raise ValueError("the encoder was not loaded from a checkpoint folder, so a checkpoint cannot point "
                             "at it; save it with the model (save_encoder=True)")
        stat = Path(source).stat()
        key = (str(source), stat.st_size, stat.st_mtime_ns)
        cached = self.encoder.__dict__.get("_source_hash")
        if cached is None or cached[0] != key:
            cached = (key, file_sha256(Path(source)))
            self.encoder.__dict__["_source_hash"] = cached
        return {"path": str(source), "sha256": cached[1]}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> "TaskModel":
        """Load what `save_pretrained` wrote, in eval mode. Every head's plugin must be installed.
        `dtype` (a torch dtype, its name, or "auto": the encoder's saved `torch_dtype`) and
        `device` place the whole model, heads included, as transformers' `from_pretrained`."""
        if dtype != "auto":   # a wrong dtype or device is said before a large model is read, not after
            dtype = _floating_dtype(resolve_dtype(dtype, None))
        device = None if device is None else resolve_device(device)
        directory = Path(directory)
        recover_folder(directory)  # a save killed between its two renames
        if directory.is_file():
            raise FileNotFoundError(f"{directory} is a file; pass a model folder, one written by "
                                    "TaskModel.save_pretrained (a training run's <output>/model)")
        if not directory.is_dir():
            raise FileNotFoundError(f"model folder {directory} does not exist; pass a folder written by "
                                    "TaskModel.save_pretrained (a training run's <output>/model)")
        info = _read_json(directory / MODEL_FILE, {"heads": list}) if (directory / MODEL_FILE).is_file() else {}
        if (directory / "encoder").is_dir():
            # strict: save_pretrained wrote exactly the weights its config.json describes, so any
            # disagreement (a hand-edited config) would load random or dropped layers
            encoder = load_encoder(BertEncoder, directory / "encoder", strict=True)
        elif isinstance(info.get("encoder"), dict):
            encoder = _referenced_encoder(info["encoder"], directory / MODEL_FILE)
        elif not info and (directory / "config.json").is_file():   # a transformers checkpoint (BertFor...)
            return cls._from_transformers(directory, device, dtype)
        else:
            # a checkpoint (best/, last/) holds its model in model/, a run folder in its checkpoints
            inside = next((f for f in (directory / "model", directory / "best" / "model", directory / "last" / "model")
                           if (f / MODEL_FILE).is_file()), None)
            raise FileNotFoundError(f"{directory} has no encoder/ folder; pass a folder written by TaskModel."
                                    f"save_pretrained{f', here {inside}' if inside else ''}")
        tokenizer = None
        if (directory / "tokenizer").is_dir():
            from .tokenizer import Tokenizer
            tokenizer = Tokenizer.from_pretrained(directory / "tokenizer")
        if info:
            names = _head_names(info["heads"], directory / MODEL_FILE)
        elif (directory / "heads").is_dir():
            names = sorted(p.name for p in (directory / "heads").iterdir() if p.is_dir())
        else:
            raise FileNotFoundError(f"{directory} has neither {MODEL_FILE} nor heads/; pass a folder written by "
                                    "TaskModel.save_pretrained (a training run's <output>/model)")
        if not names:
            raise CheckpointError(f"{directory / MODEL_FILE if info else directory / 'heads'} lists no heads; "
                                  "a saved TaskModel has at least one (restore the file, or save the model again)")
        model = cls(encoder, {}, tokenizer=tokenizer)
        for name in names:
            model.add_head(str(name), load_head(directory / "heads" / str(name), encoder.config),
                           load_pretrained=False)
        model.eval()
        return model.to(device=device, dtype=_floating_dtype(resolve_dtype(dtype, encoder.config)))

    @classmethod
    def _from_transformers(cls, directory: Path, device, dtype) -> "TaskModel":
        """A transformers task checkpoint (BertForSequenceClassification & co.) as a TaskModel:
        its encoder, the installed head that imports its class (`Head.options_from_transformers`,
        named as the head type) with the weights that head's `transformers_export` names, and
        the folder's tokenizer. The inverse of `bertcore.export.export_transformers`."""
        from .tokenizer import Tokenizer, tokenizer_file
        encoder = load_encoder(BertEncoder, directory, with_head=True)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        claim = plugins.transformers_head(config)
        if claim is None:
            named = ", ".join(config.get("architectures") or ["no named class"])
            raise CheckpointError(f"{directory} is a transformers checkpoint of {named}, which no installed head "
                                  "imports; load its encoder with "
                                  "BertEncoder.from_pretrained and attach a head, or pass a folder written by "
                                  "TaskModel.save_pretrained")
        head_type, options = claim
        tokenizer = Tokenizer.from_pretrained(directory) if tokenizer_file(directory) else None
        model = cls(encoder, {head_type.name: head_type(encoder.config, **options)}, tokenizer=tokenizer)
        weights, tied = encoder.pretrained_head_weights, {id(p) for p in encoder.parameters()}
        for key, own in model.heads[head_type.name].transformers_export()["state_dict"].items():
            if key not in weights:
                if id(own) in tied:   # MLM's decoder is the word embeddings: a file may leave it out
                    continue
                raise CheckpointError(f"{directory}: the {config['architectures'][0]} weights lack {key!r}; the "
                                      "checkpoint is incomplete")
            if weights[key].shape != own.shape:
                raise CheckpointError(f"{directory}: {key!r} is {tuple(weights[key].shape)} but the {head_type.name} "
                                      f"head built from config.json has {tuple(own.shape)}; config.json and the "
                                      "weights disagree")
            with torch.no_grad():
                own.copy_(weights[key])
        model.eval()
        return model.to(device=device, dtype=_floating_dtype(resolve_dtype(dtype, encoder.config)))

    def save_head(self, directory: str | os.PathLike, name: str | None = None) -> Path:
        """Save one head alone (head.json + head.safetensors, a few KB to MB), to share it
        or to put it on another encoder of the same hidden size with `load_head`."""
        name = self.head_names(name)[0]
        directory = Path(directory)
        _check_replaceable(directory, allowed={HEAD_CONFIG, HEAD_WEIGHTS})
        with folder_swap(directory) as tmp:
            save_head(self.heads[name], tmp, name)
        return directory

    def load_head(self, path: str | os.PathLike, name: str | None = None) -> Head:
        """Add a head saved elsewhere (heads/<name>/ of another TaskModel, or `save_head`'s
        folder) to this model, under `name`, else the name it was saved under (head.json
        files of older versions record none: the folder's name)."""
        path = Path(path)
        head = load_head(path, self.encoder.config)
        return self.add_head(name or _saved_name(path / HEAD_CONFIG) or path.name, head, load_pretrained=False)


# ---- one head on disk ---------------------------------------------------------------------

def save_head(head: Head, directory: Path, name: str | None = None) -> None:
    """head.json + head.safetensors. Weights shared with the encoder (MLM's tied decoder)
    are not in the head's state dict, so they are never stored twice. `name`, the head's
    name in its TaskModel, is recorded: `save_head`'s folder can be called anything."""
    try:
        info = plugins.head_info(head.name)
    except plugins.HeadNotFoundError:  # a Head subclass used without registering it
        logger.warning("head type %r is not registered; saving it anyway, but loading it needs a plugin "
                       "that registers it", head.name)
        info = HeadInfo(head.name, "unknown", "unknown", head.description)
    write_json(directory / HEAD_CONFIG, {
        **({"name": name} if name is not None else {}),
        "head_type": head.name, "distribution": info.distribution, "version": info.version,
        "hidden_size": head.config.hidden_size, "vocab_size": head.config.vocab_size,
        "config": head.get_config(), "bertcore_version": plugins.core_version()})
    save_tensors(head.state_dict(), directory / HEAD_WEIGHTS)


def load_head(directory: Path, config) -> Head:
    """Rebuild a saved head for an encoder with BertConfig `config`."""
    file = directory / HEAD_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no {HEAD_CONFIG} in {directory}; pass a heads/<name>/ folder "
                                "written by TaskModel.save_pretrained")
    saved = _read_json(file, {"head_type": str, "hidden_size": int, "config": dict})
    head_type = saved["head_type"]
    if not isinstance(saved.get("distribution"), (str, type(None))):
        raise CheckpointError(f"{file}: distribution is {json.dumps(saved['distribution'])}; expected the name "
                              "of the plugin's distribution (a string), as save_pretrained wrote it")
    _check_hidden(saved["hidden_size"], config.hidden_size, f"the {head_type!r} head in {directory}")
    # Checks that the installed plugin is the distribution the file names, and never tells
    # the user to install a name read from the file without saying where it came from.
    cls = plugins.get_head_type(head_type, distribution=saved.get("distribution"), source=file)
    try:
        head = cls(config, **saved["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: the installed {head_type!r} head rejects the saved options "
                              f"({err}); is the plugin the version that saved it ({saved.get('version')})?") from None
    load_weights(head, read_state_dict(directory / HEAD_WEIGHTS), str(directory / HEAD_WEIGHTS), strict=True,
                 described_by=str(file))
    return head


def _saved_name(file: Path) -> str | None:
    """The head name head.json records; None in one written before names were recorded."""
    name = _read_json(file, {}).get("name")
    if name is not None and not _folder_name(name):
        raise CheckpointError(f"{file}: name {name!r} is not a head name (letters, digits, '_', '-' or '.'); "
                              "fix it there, or pass load_head(path, name=...)")
    return name


def _check_features(features, head: str, index: int) -> None:
    """What `Head.encode` returns: a list of feature dicts, each with flat `input_ids` and
    `token_type_ids` of one length. A plugin's slip (the tokenizer's batch of one left
    unindexed) failed far from it, in collation, naming neither the head nor encode()."""
    fix = "encode() returns a list of feature dicts with flat lists 'input_ids' and 'token_type_ids' of one length"
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise TypeError(f"head {head!r}: encode() returned {type(features).__name__} for example {index + 1}; {fix}")
    for feature in features:
        missing = [k for k in ("input_ids", "token_type_ids") if not isinstance(feature.get(k), (list, tuple))]
        if missing:
            raise TypeError(f"head {head!r}: a feature of example {index + 1} has no list {missing[0]!r} (it has "
                            f"{', '.join(map(str, feature)) or 'nothing'}); {fix}")
        ids, types = feature["input_ids"], feature["token_type_ids"]
        if ids and isinstance(ids[0], (list, tuple)):
            raise TypeError(f"head {head!r}: a feature's input_ids is a list of lists (example {index + 1}); "
                            "take the tokenizer's first row, tokenizer(text)['input_ids'][0]")
        if len(ids) != len(types):
            raise ValueError(f"head {head!r}: a feature of example {index + 1} has {len(ids)} input_ids but "
                             f"{len(types)} token_type_ids; {fix}")


def _check_head_config(name: str, head: Head) -> None:
    """`get_config()` is saved as JSON: one it cannot be (a set, a tensor) failed a run at its
    first checkpoint, after the training, naming neither the head nor the option."""
    config = head.get_config()
    if not isinstance(config, dict):
        raise TypeError(f"head {name!r} ({head.name}): get_config() returned {type(config).__name__}; it returns "
                        "a dict of the head's options, which create_head takes back")
    for key, value in config.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise TypeError(f"head {name!r} ({head.name}): get_config()[{key!r}] is {type(value).__name__}, which "
                            "JSON cannot hold; return the option as JSON values (lists, dicts, str, numbers)") from None


def _floating_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype}: a model's weights take a floating-point dtype (torch.bfloat16, "
                         "torch.float16, torch.float32)")
    return dtype


def _read_json(file: Path, schema: dict[str, type]) -> dict:
    """A JSON object with the given keys of the given types, or a one-line error naming the file and key."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err}); the file is damaged: save the model again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got a {type(data).__name__}")
    for key, kind in schema.items():
        if key not in data:
            raise CheckpointError(f"{file}: missing key {key!r}")
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise CheckpointError(f"{file}: key {key!r} is a {type(data[key]).__name__}, expected {kind.__name__}")
    return data


def _referenced_encoder(reference: dict, file: Path) -> BertEncoder:
    """The encoder a head-only save points at, if its weights are still the ones saved."""
    path, digest = Path(str(reference.get("path"))), reference.get("sha256")
    if not path.is_file():
        raise FileNotFoundError(f"{file} points at the encoder weights {path}, which do not exist any more; "
                                "put them back, or load the heads onto an encoder with TaskModel.load_head")
    if file_sha256(path) != digest:
        raise CheckpointError(f"{file} points at the encoder weights {path}, which changed since it was saved "
                              f"(sha256 {digest[:12]}... expected); its heads were trained on the old ones")
    return BertEncoder.from_pretrained(path.parent)


def _folder_name(name) -> bool:
    """Whether `name` can name a head's folder: heads/".." would be the model folder itself."""
    return isinstance(name, str) and bool(_NAME.match(name)) and name not in (".", "..")


def _head_names(names: list, file: Path) -> list[str]:
    """taskmodel.json's head names, each a folder name under heads/ and listed once."""
    for i, name in enumerate(names):
        if not _folder_name(name):  # a path would load a head from elsewhere
            raise CheckpointError(f"{file}: head name {name!r} is not a folder name "
                                  "under heads/; restore the file, or save the model again")
        if name in names[:i]:
            raise CheckpointError(f"{file}: head {name!r} is listed twice; list each head once")
    return names


def _check_outside(weights: Path, directory: Path) -> None:
    """A save that points at the encoder's weights must not replace the folder holding them."""
    if directory.resolve() in weights.resolve().parents:
        raise ValueError(f"the encoder's weights {weights} are inside {directory}, which saving replaces; "
                         "save with save_encoder=True, or into another folder")


def check_text_room(max_length, named: str | None = None, default: str = "") -> None:
    """A max_length of at least 8, the one rule for the API and the CLI (`named`: how the
    message names it, e.g. "--max-length 5"). Below 3 nothing fits between [CLS] and [SEP]
    (NER tagged every word O); below 8 a few tokens do, and a pair or a question less."""
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length >= 8:
        return
    named = named or f"max_length={max_length!r}"
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        room = "must be a whole number of tokens"
    elif max_length >= 3:
        room = f"is too short: {max_length - 2} tokens of text fit between [CLS] and [SEP], fewer in a pair"
    else:
        room = "leaves no room for text between [CLS] and [SEP]"
    raise ValueError(f"{named} {room}; use 8 or more{default}")


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be a whole number >= 1")


def _check_replaceable(directory: Path, allowed=SAVED_ENTRIES) -> None:
    """Saving swaps the whole folder: refuse to replace one that holds anything else."""
    blocker = file_above(directory)
    if blocker is not None:  # else mkdir's bare "[Errno 17] File exists"
        raise FileExistsError(f"cannot save in {directory}: {blocker} is a file, not a folder; fix the path")
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; pass a folder to save the model in")
    if directory.is_dir():
        other = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
        if other:
            raise FileExistsError(f"{directory} holds files that are not a saved model ({', '.join(other[:5])}); "
                                  "save into a new or empty folder (saving replaces the whole folder)")


def _check_hidden(head_size: int, encoder_size: int, what: str) -> None:
    if head_size != encoder_size:
        raise ValueError(f"{what} was built for hidden_size={head_size}, but the encoder has hidden_size="
                         f"{encoder_size}; a head only loads onto an encoder of the same hidden size: use the "
                         "encoder it was trained with, or create and train a new head for this one")


def to_device(batch: dict, device) -> dict:
    """The batch with every tensor on `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
