"""BertConfig: one dataclass, HF `config.json` field names, bert-base defaults."""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import write_json

CONFIG_NAME = "config.json"
MAX_POSITIONS = 512  # BERT's WordPiece input is at most 512 positions


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder, named as in Hugging Face's `config.json`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Fields HF writes that we carry through save/load untouched (architectures, ...).
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._check_types()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; pick a head count that divides it")
        if self.max_position_embeddings > MAX_POSITIONS:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} exceeds BERT's "
                f"{MAX_POSITIONS} positions")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; use 'gelu'")

    def _check_types(self):
        """Each field holds its declared type (JSON gives strings, lists and nulls too).
        An int is accepted for a float field and stored as a float."""
        kinds = {int: "an integer", float: "a number", str: "a string"}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            kind, value = _FIELD_TYPES[f.name], getattr(self, f.name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not isinstance(value, kind) or isinstance(value, bool):
                got = "null" if value is None else f"{value!r} ({_JSON_NAMES.get(type(value), type(value).__name__)})"
                raise ValueError(f"{f.name} must be {kinds[kind]}, got {got}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        """A config from `config.json`'s fields; unknown fields are kept in `extra`."""
        if not isinstance(values, dict):
            raise ValueError(f"a config must be a JSON object of fields, got {_JSON_NAMES.get(type(values), type(values).__name__)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        if extra.get("model_type", "bert") != "bert":
            raise ValueError(f"config has model_type={extra['model_type']!r}; bertcore loads 'bert' models")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        values = {"architectures": ["BertModel"], "model_type": "bert", **self.extra}
        values.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        values["model_type"] = "bert"
        return values

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "BertConfig":
        """Read `config.json` from a directory, or the JSON file itself."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {file}; pass a checkpoint directory or its config.json")
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not UTF-8 text; is it a config.json?") from None
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as err:  # name the file: the key alone does not say where
            raise ValueError(f"{file}: {err}; fix that value in the file") from None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` (keys sorted) atomically into `directory`."""
        return write_json(Path(directory) / CONFIG_NAME, dict(sorted(self.to_dict().items())))


_FIELD_TYPES = {f.name: {"int": int, "float": float, "str": str}.get(f.type, f.type)
                for f in dataclasses.fields(BertConfig) if f.name != "extra"}
_JSON_NAMES = {str: "a string", list: "a list", dict: "an object", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}
