"""HF BERT checkpoints in and out: safetensors (or a weights-only pytorch_model.bin),
with or without the `bert.` prefix, legacy gamma/beta names, `cls.*` kept for heads."""
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import BertConfig
from .files import save_tensors

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
IGNORED_KEYS = ("embeddings.position_ids",)  # a buffer older HF versions saved
# Weights a checkpoint may lack: HF saves BertForMaskedLM, token classification and QA
# models without the pooler; it is left at its initial values with a warning, as
# transformers does. Any other missing weight means config.json and the weights disagree.
OPTIONAL_PREFIXES = ("pooler.",)
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings", "type_vocab_size")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or not a BERT encoder."""


def find_weights(directory: Path) -> Path:
    for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in {directory}; pass an HF BERT checkpoint directory")


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .bin file; corrupt files raise CheckpointError."""
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: {_unreadable(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors (a state dict)")
    return state


def _unreadable(err: Exception) -> str:
    """Why a weights file cannot be read, in one line. torch's weights_only refusal runs to
    several lines and advises loading again with weights_only=False, which would run the
    code a tampered file holds: it is never passed on."""
    code = re.search(r"unsupported GLOBAL (\S+)", str(err))
    if isinstance(err, pickle.UnpicklingError) and code:
        return (f"it holds Python objects, not only tensors (loading it would call {code.group(1)}); bertcore "
                "loads tensors only: convert it to model.safetensors where you trust its source")
    reason = "not a pickle of tensors" if isinstance(err, pickle.UnpicklingError) else \
        (str(err).strip().splitlines() or [""])[0]
    return f"cannot read weights ({type(err).__name__}: {reason}); the file is truncated or not a checkpoint"


def to_encoder_keys(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Split an HF state dict into (encoder weights with our key names, head weights): the
    pretraining heads' cls.*, and in a task model's file (its encoder under bert.) the
    task head's own keys (classifier.*, qa_outputs.*)."""
    encoder, heads = {}, {}
    task_model = any(key.startswith("bert.") for key in state)
    for key, tensor in state.items():
        if key.startswith("cls.") or (task_model and not key.startswith("bert.")):
            heads[key] = tensor
            continue
        key = key.removeprefix("bert.")
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if key not in IGNORED_KEYS:
            encoder[key] = tensor
    return encoder, heads


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 strict: bool = False, described_by: str = "config.json") -> tuple[list, list]:
    """Copy `state` into `model` key by key: the one checked weight loader (encoder, heads,
    training checkpoints). A shape mismatch is an error naming the key; so are missing or
    unexpected keys with `strict`; `described_by` names the file the model's shapes come
    from. Returns (missing, unexpected) key lists."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{source} does not match the model: missing {', '.join(missing[:5]) or 'none'}"
                              f"{' ...' if len(missing) > 5 else ''}; unexpected {', '.join(unexpected[:5]) or 'none'}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    if own and len(missing) == len(own):
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(f"{source}: none of the model's keys are in this file (it holds: {sample}, ...); "
                              "is it a BERT checkpoint?")
    for key, param in own.items():
        if key in state and state[key].shape != param.shape:
            raise CheckpointError(f"{source}: checkpoint key {key} has shape {tuple(state[key].shape)}, "
                                  f"model expects {tuple(param.shape)}; does {described_by} match the weights?")
    with torch.no_grad():
        for key, tensor in state.items():
            if key in own:
                own[key].copy_(tensor)
    return missing, unexpected


def check_config(model, state: dict[str, torch.Tensor], config_source: str, weights: Path,
                 strict: bool = False) -> None:
    """Refuse weights that the encoder's config disagrees with (a hand-edited config.json):
    loading them would leave layers at random initial values and predict garbage without
    a word. Missing weights (but the optional pooler) and wrong shapes are errors; with
    `strict` (a folder bertcore saved itself) so are weights the config has no room for."""
    own = model.state_dict()
    if not any(k in state for k in own):
        return  # not a BERT file at all: load_weights says so
    fix = f"restore the config.json saved with {weights.name} or re-save the model" \
        if config_source.endswith("config.json") else "leave out the settings the weights do not fit"
    wanted = model.config.num_hidden_layers
    # the layer count first: the commonest edit, named once rather than as 16 missing keys
    held = 1 + max((int(k.split(".")[2]) for k in state
                    if k.startswith("encoder.layer.") and k.split(".")[2].isdigit()), default=-1)
    if held < wanted or (strict and held > wanted):
        gap = f"encoder.layer.{held}.* missing" if held < wanted else f"encoder.layer.{wanted}.* unused"
        raise CheckpointError(f"{config_source}: num_hidden_layers={wanted} but {weights.name} holds {held} "
                              f"layers ({gap}); {fix}")
    for key, param in own.items():
        if key in state and state[key].shape != param.shape:
            found, expected = tuple(state[key].shape), tuple(param.shape)
            # the size field that gave the wrong dimension, when only one config value fits it
            wrong = {e for f, e in zip(found, expected) if f != e}
            fields = [f"{n}={getattr(model.config, n)}" for n in SIZE_FIELDS if getattr(model.config, n) in wrong]
            raise CheckpointError(f"{config_source}: checkpoint key {key} has shape {found}, model expects "
                                  f"{expected}{f' from {fields[0]}' if len(fields) == 1 else ''}; {fix}")
    optional = () if strict else OPTIONAL_PREFIXES
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in own] if strict else []
    if missing or unexpected:
        which = f"missing {', '.join(missing[:3])}" if missing else f"unused {', '.join(unexpected[:3])}"
        raise CheckpointError(f"{config_source}: the config and {weights.name} disagree ({which}"
                              f"{' ...' if len(missing or unexpected) > 3 else ''}); {fix}")


def hub_cache() -> Path:
    """Where transformers and `hf download` keep Hub models: `HF_HUB_CACHE`, else
    `HF_HOME/hub`, else ~/.cache/huggingface/hub."""
    return Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or
                                                        Path.home() / ".cache" / "huggingface") / "hub")


def resolve_pretrained(name_or_path) -> Path:
    """A checkpoint folder: the path itself, or a Hub name ("org/name") found in the local
    Hugging Face cache (see hub_cache; the snapshot `refs/main` names, else the newest).
    Nothing is downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise NotADirectoryError(f"{path} is a file; pass the checkpoint folder that holds it ({path.parent})")
    name = str(name_or_path)
    cache = hub_cache()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        repo = cache / ("models--" + name.replace("/", "--"))
        ref = repo / "refs" / "main"
        if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
            return repo / "snapshots" / ref.read_text().strip()
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) \
            if (repo / "snapshots").is_dir() else []
        if snapshots:
            return snapshots[-1]
    raise FileNotFoundError(_not_found(name, path, cache))


def bert_folder(directory: Path) -> Path:
    """The folder holding a checkpoint's BERT (config.json, weights, tokenizer): `directory`,
    or in a sentence-transformers folder of the older layout, whose modules.json puts the
    Transformer module under a path such as "0_Transformer", that module's folder."""
    if (directory / "config.json").is_file() or not (directory / "modules.json").is_file():
        return directory
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        paths = [m.get("path") for m in modules if str(m.get("type", "")).endswith(".Transformer")]
    except (OSError, ValueError, AttributeError, TypeError):
        return directory     # not sentence-transformers' file: the caller says what is missing
    inner = directory / paths[0] if paths and isinstance(paths[0], str) and paths[0] else None
    return inner if inner is not None and (inner / "config.json").is_file() else directory


def _not_found(name: str, path: Path, cache: Path) -> str:
    """Why `name` names no checkpoint, and the fix, in one line. A bare name (the README's
    old `all-MiniLM-L6-v2`) is how the Hub shows a model, but the cache keys it as org/name:
    a cached model of that name is offered. A path is checked against the folders that exist."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return f"checkpoint folder {path} does not exist{_nearby(path)}; pass an existing checkpoint folder"
    near = _nearby(path) if path.parent.is_dir() else ""  # org/ of org/name is no folder to name
    where = f"{name} is neither a folder{near} nor in the local Hugging Face cache ({cache})"
    if "/" in name:
        return f"{where}; download it once with `hf download {name}`, or pass its folder"
    cached = sorted(p.name.removeprefix("models--").replace("--", "/", 1) for p in cache.glob("models--*--*")
                    if p.name.lower().endswith("--" + name.lower()))
    if cached:
        return f"{where} under that name; Hub names are org/name: did you mean {cached[0]} (it is cached)?"
    example = "sentence-transformers/all-MiniLM-L6-v2"
    return (f"{where}; pass a checkpoint folder, or a Hub name as org/name (e.g. {example}), "
            f"downloaded once with `hf download {example}`")


def _nearby(path: Path) -> str:
    """' (did you mean X?)' for a typo in the first part of `path` that does not exist
    (its last part, or a folder above it, which is then named), else ''."""
    missing = next((p for p in [path, *path.parents] if p.parent.is_dir() or p.parent == p), path)
    if missing.parent == missing:
        return ""
    try:
        folders = [p.name for p in missing.parent.iterdir() if p.is_dir()]
    except OSError:  # an unreadable folder: no suggestion, rather than an error about the hint
        folders = []
    close = difflib.get_close_matches(missing.name, folders, n=1)
    gone = f"{missing} does not exist" if missing != path else ""
    typo = f"did you mean {missing.parent / close[0]}?" if close else ""
    return f" ({'; '.join(filter(None, (gone, typo)))})" if gone or typo else ""


def resolve_dtype(value, config: BertConfig):
    """torch_dtype / dtype as transformers takes it: a torch.dtype, its name, or "auto"
    (the checkpoint's own `torch_dtype`, float32 when it has none)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":  # a null in config.json is no dtype saved, as transformers reads it
        saved = config.extra.get("torch_dtype", config.extra.get("dtype")) or "float32"
        dtype = getattr(torch, str(saved).removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype='auto' reads the checkpoint's config.json, whose torch_dtype {saved!r} is not a "
                             "torch dtype; fix it there (e.g. \"float32\") or pass dtype=torch.float32")
        return dtype
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={value!r} is not a torch dtype; use e.g. torch.bfloat16, 'float16' or 'auto'")
    return dtype


def resolve_device(name) -> torch.device:
    """A device the user named ("cpu", "cuda:1", a torch.device), or a one-line error:
    torch's own lists twenty device types and leaves out a GPU index this machine lacks."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a device; use cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ValueError(f"device={name!r}, but this machine has {count} CUDA devices; "
                         "use cpu, or leave the device out to use a GPU when there is one")
    return device


def load_encoder(cls, name_or_path, config: BertConfig | None = None, *, dtype=None, torch_dtype=None,
                 device=None, strict: bool = False, with_head: bool = False, **overrides):
    """The encoder of a checkpoint folder (or a cached Hub name), in eval mode, as
    transformers' from_pretrained: `dtype` (or `torch_dtype`) and `device` place it;
    `overrides` replace config fields and must name real ones. The config must match the
    weights (see check_config); `strict` also refuses weights the config leaves unused. `with_head`:
    the caller loads the task head too (TaskModel.from_pretrained of a transformers task model), so
    its weights and a missing pooler (token-level classes have none) are not warned about."""
    directory = bert_folder(resolve_pretrained(name_or_path))
    if config is None and not (directory / "config.json").exists():
        # a saved TaskModel (pretrain's runs/pt/model) or a run's folder: else "no config.json",
        # which names neither the folder to pass nor its tokenizer
        if (directory / "encoder").is_dir():
            tokenizer = f"; its tokenizer is {directory / 'tokenizer'}" if (directory / "tokenizer").is_dir() else ""
            raise FileNotFoundError(f"{directory} is a saved TaskModel, not an encoder folder; pass its encoder "
                                    f"{directory / 'encoder'}{tokenizer} (--tokenizer, tok=)")
        if (directory / "model" / "encoder").is_dir():
            raise FileNotFoundError(f"{directory} is a run's folder, not an encoder folder; pass the encoder of "
                                    f"its model, {directory / 'model' / 'encoder'}")
    config_source = str(directory / "config.json") if config is None else "the config passed to from_pretrained"
    if overrides:
        config_source += f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}"
    config = config or BertConfig.from_pretrained(directory)
    if overrides:
        fields = sorted(f.name for f in dataclasses.fields(BertConfig) if f.name != "extra")
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"from_pretrained() got unknown keyword {unknown[0]!r}; it takes dtype, torch_dtype, "
                            f"device, config, and config fields to override: {', '.join(fields)}")
        config = BertConfig.from_dict({**config.to_dict(), **overrides})
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise TypeError("pass dtype= or torch_dtype= (the same thing), not both")
    dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, config)
    file = find_weights(directory)
    encoder_state, head_state = to_encoder_keys(read_state_dict(file))
    model = cls(config)
    check_config(model, encoder_state, config_source, file, strict=strict)
    missing, unexpected = load_weights(model, encoder_state, str(file))
    if with_head:   # a transformers task model loaded with its head: token-level classes have no pooler
        missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        logger.warning("%s: %d encoder weights not in the checkpoint, left at their initial values: %s",
                       file, len(missing), ", ".join(missing[:10]))
    if unexpected:
        logger.warning("%s: %d keys not used by the encoder: %s", file, len(unexpected), ", ".join(unexpected[:10]))
    task = [k for k in head_state if not k.startswith("cls.")]
    if task and not with_head:   # not the encoder's, as transformers says too ("Some weights ... were not used")
        logger.warning("%s: a task head's weights (%s) are not the encoder's; TaskModel.from_pretrained of the "
                       "folder loads them with their head", file, ", ".join(task[:4]))
    model.pretrained_head_weights = head_state
    model.source = file.absolute()  # what a head-only checkpoint of a frozen encoder points at (a Hub
    # snapshot's path, not the blob its symlink resolves to: config.json lies beside the former)
    model.eval()
    if dtype is not None or device is not None:
        model.to(device=None if device is None else resolve_device(device), dtype=dtype)
    return model


def file_sha256(file: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_encoder(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # weights first: a write that fails (a full disk) leaves an older save's config beside its own
    # weights, not the new config beside old weights of the same shapes, which loaded silently
    save_tensors(model.state_dict(), directory / WEIGHTS_NAME)
    model.config.save_pretrained(directory)
    return directory
