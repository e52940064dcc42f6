"""TaskModel: one encoder shared by named heads; run, predict, evaluate, save, load.

    model = TaskModel(encoder, {"sentiment": create_head("classification", cfg, labels=[...])},
                      tokenizer=tok)
    logits = model(batch, head="sentiment")          # batch from head.collate(features)
    model.predict(["great film"], head="sentiment")  # [{"label": "pos", "score": 0.97, ...}]
    model.save_pretrained("out/model")

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
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import atomic_save_file, read_state_dict
from .heads import Head, HeadInfo
from .model import BertEncoder
from . import plugins

logger = logging.getLogger(__name__)

MODEL_FILE = "taskmodel.json"
HEAD_CONFIG = "head.json"
HEAD_WEIGHTS = "head.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class TaskModel(nn.Module):
    """An encoder and a dict of named heads (several at once: MLM + NSP, two
    classification tasks, ...). Heads of an HF pretraining checkpoint (`cls.*`)
    are loaded into fresh MLM/NSP heads unless `load_pretrained_heads=False`."""

    def __init__(self, encoder: BertEncoder, heads: dict[str, Head], tokenizer=None,
                 load_pretrained_heads: bool = True):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self.tokenizer = tokenizer
        for name, head in heads.items():
            self.add_head(name, head, load_pretrained=load_pretrained_heads)

    def add_head(self, name: str, head: Head, load_pretrained: bool = True) -> Head:
        """Attach `head` under `name`; its hidden size must equal the encoder's."""
        if not _NAME.match(name):
            raise ValueError(f"head name {name!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
        if not isinstance(head, Head):
            raise TypeError(f"head {name!r} is a {type(head).__name__}, not a bertcore.Head; "
                            "make one with bertcore.create_head(...)")
        _check_hidden(head.config.hidden_size, self.encoder.config.hidden_size, f"head {name!r}")
        head.attach(self.encoder)
        if load_pretrained and getattr(self.encoder, "pretrained_head_weights", None):
            head.load_pretrained_weights(self.encoder.pretrained_head_weights)
        self.heads[name] = head.to(self.device)
        return head

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _names(self, head) -> list[str]:
        if head is None:
            if len(self.heads) != 1:
                raise ValueError(f"this model has heads {list(self.heads)}; pass head=NAME")
            return list(self.heads)
        names = [head] if isinstance(head, str) else list(head)
        for n in names:
            if n not in self.heads:
                raise KeyError(f"no head named {n!r}; this model has {list(self.heads)}")
        return names

    # ---- running -------------------------------------------------------------------

    def forward(self, batch: dict, head: str | list[str] | None = None):
        """Encode a packed batch once and run the named head on it: its logits, or a dict
        name -> logits when `head` is a list (e.g. ["mlm", "nsp"] in pretraining)."""
        names = self._names(head)
        batch = to_device(batch, self.device)
        out = self.encoder.forward_packed(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"],
                                          batch.get("token_type_ids"), batch.get("position_ids"))
        logits = {n: self.heads[n](out, batch) for n in names}
        return logits[names[0]] if isinstance(head, str) or head is None else logits

    def loss(self, batch: dict, head: str | list[str] | None = None) -> torch.Tensor:
        """Sum of the named heads' losses on one batch (one encoder pass)."""
        names = self._names(head)
        logits = self(batch, head=names)
        batch = to_device(batch, self.device)
        return sum(self.heads[n].loss(logits[n], batch) for n in names)

    def predict(self, inputs, head: str | None = None, batch_size: int = 32, max_length: int | None = None,
                tokenizer=None):
        """Decoded predictions: one for a single input (str, (text, pair) tuple, or example
        dict), a list for a list (so one NER word list goes in as a tuple). What one
        prediction looks like is up to the head's `decode`."""
        name = self._names(head)[0]
        single = not isinstance(inputs, list)
        examples = [self.heads[name].example_from_input(x) for x in ([inputs] if single else inputs)]
        predictions, _ = self._run(examples, name, batch_size, max_length, tokenizer, with_loss=False)
        return predictions[0] if single else predictions

    def evaluate(self, examples: list[dict], head: str | None = None, batch_size: int = 32,
                 max_length: int | None = None, tokenizer=None) -> dict[str, float]:
        """The head's metrics on labelled examples, plus the mean `loss` over batches."""
        name = self._names(head)[0]
        predictions, loss = self._run(examples, name, batch_size, max_length, tokenizer, with_loss=True)
        return {"loss": loss, **self.heads[name].metrics(predictions, examples)}

    @torch.no_grad()
    def _run(self, examples, name, batch_size, max_length, tokenizer, with_loss):
        head, tok = self.heads[name], tokenizer or self.tokenizer
        if tok is None:
            raise ValueError("this TaskModel has no tokenizer; build it with TaskModel(encoder, heads, "
                             "tokenizer=bertcore.Tokenizer.from_pretrained(...)) or pass tokenizer=")
        max_length = max_length or min(512, self.encoder.config.max_position_embeddings)
        features, owner = [], []
        for i, example in enumerate(examples):
            for f in head.encode(example, tok, max_length):
                features.append(f)
                owner.append(i)
        outputs, losses = [None] * len(features), []
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(features), batch_size):
                batch = to_device(head.collate(features[start:start + batch_size]), self.device)
                logits = self(batch, head=name)
                if with_loss and head.has_labels(batch):
                    losses.append(float(head.loss(logits, batch)))
                outputs[start:start + batch_size] = head.split(logits, batch)
        finally:
            self.train(was_training)
        per_example = [([], []) for _ in examples]
        for f, out, i in zip(features, outputs, owner):
            per_example[i][0].append(f)
            per_example[i][1].append(out)
        predictions = [head.decode(ex, fs, outs) for ex, (fs, outs) in zip(examples, per_example)]
        return predictions, (sum(losses) / len(losses) if losses else float("nan"))

    # ---- saving ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write encoder/, tokenizer/ and heads/<name>/ (see the module docstring)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / "encoder")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory / "tokenizer")
        for name, head in self.heads.items():
            save_head(head, directory / "heads" / name)
        _write_json(directory / MODEL_FILE, {"heads": list(self.heads), "bertcore_version": plugins.core_version()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None) -> "TaskModel":
        """Load what `save_pretrained` wrote. Every head's plugin must be installed."""
        directory = Path(directory)
        if not (directory / "encoder").is_dir():
            raise FileNotFoundError(f"{directory} has no encoder/ folder; pass a folder written by "
                                    "TaskModel.save_pretrained")
        encoder = BertEncoder.from_pretrained(directory / "encoder")
        tokenizer = None
        if (directory / "tokenizer").is_dir():
            from .tokenizer import Tokenizer
            tokenizer = Tokenizer.from_pretrained(directory / "tokenizer")
        if (directory / MODEL_FILE).is_file():
            names = json.loads((directory / MODEL_FILE).read_text(encoding="utf-8"))["heads"]
        else:
            names = sorted(p.name for p in (directory / "heads").iterdir() if p.is_dir())
        model = cls(encoder, {}, tokenizer=tokenizer)
        for name in names:
            model.add_head(name, load_head(directory / "heads" / name, encoder.config), load_pretrained=False)
        return model.to(device) if device is not None else model

    def load_head(self, path: str | os.PathLike, name: str | None = None) -> Head:
        """Add a head saved elsewhere (heads/<name>/ of another TaskModel) to this model."""
        path = Path(path)
        return self.add_head(name or path.name, load_head(path, self.encoder.config), load_pretrained=False)


# ---- one head on disk ---------------------------------------------------------------------

def save_head(head: Head, directory: Path) -> None:
    """head.json + head.safetensors. Weights shared with the encoder (MLM's tied decoder)
    are not in the head's state dict, so they are never stored twice."""
    try:
        info = plugins.head_info(head.name)
    except plugins.HeadNotFoundError:  # a Head subclass used without registering it
        logger.warning("head type %r is not registered; saving it anyway, but loading it needs a plugin "
                       "that registers it", head.name)
        info = HeadInfo(head.name, "unknown", "unknown", head.description)
    _write_json(directory / HEAD_CONFIG, {
        "head_type": head.name, "distribution": info.distribution, "version": info.version,
        "hidden_size": head.config.hidden_size, "vocab_size": head.config.vocab_size,
        "config": head.get_config(), "bertcore_version": plugins.core_version()})
    atomic_save_file(head.state_dict(), directory / HEAD_WEIGHTS)


def load_head(directory: Path, config) -> Head:
    """Rebuild a saved head for an encoder with BertConfig `config`."""
    file = directory / HEAD_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no {HEAD_CONFIG} in {directory}; pass a heads/<name>/ folder "
                                "written by TaskModel.save_pretrained")
    saved = json.loads(file.read_text(encoding="utf-8"))
    head_type, dist = saved["head_type"], saved.get("distribution", f"bertcore-{saved['head_type']}")
    _check_hidden(saved["hidden_size"], config.hidden_size, f"the {head_type!r} head in {directory}")
    try:
        cls = plugins.get_head_type(head_type)
    except plugins.HeadNotFoundError as err:
        raise plugins.HeadNotFoundError(
            f"{directory} holds a {head_type!r} head from {dist} {saved.get('version', '')}, but no installed "
            f"plugin provides it; run `bertcore install {head_type}` (pip install {dist}) and load again. "
            f"({err})") from None
    head = cls(config, **saved.get("config", {}))
    state = read_state_dict(directory / HEAD_WEIGHTS)
    own = head.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ValueError(f"{directory / HEAD_WEIGHTS}: {key} has shape {tuple(tensor.shape)}, the "
                             f"{head_type} head expects {tuple(own[key].shape)}; was it saved with another "
                             "vocabulary or label set?")
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / HEAD_WEIGHTS} does not match the {head_type} head: missing "
                         f"{missing}, unexpected {unexpected}; is the installed plugin ({dist}) the version "
                         f"that saved it ({saved.get('version')})?")
    return head


def _check_hidden(head_size: int, encoder_size: int, what: str) -> None:
    if head_size != encoder_size:
        raise ValueError(f"{what} was built for hidden_size={head_size}, but the encoder has hidden_size="
                         f"{encoder_size}; a head only loads onto an encoder of the same hidden size: use the "
                         "encoder it was trained with, or create and train a new head for this one")


def to_device(batch: dict, device) -> dict:
    """The batch with every tensor on `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _write_json(file: Path, data: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
