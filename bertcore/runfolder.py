"""A training run's output folder: its lock, and checkpoints that survive any crash.

    <output_dir>/.lock            held (flock) while a Trainer runs; names its holder
    <output_dir>/last/            newest checkpoint: model/ + trainer_state.pt + manifest.json
    <output_dir>/best/            best model by the eval metric: model/ + manifest.json

`model/` is what `TaskModel.save_pretrained` writes (every weight once; it loads with
`TaskModel.from_pretrained`). `trainer_state.pt` holds optimizer, scheduler, RNG and
loop state as tensors and plain data, read with `torch.load(weights_only=True)`.
`manifest.json`, written last, lists every file with its size and SHA-256; a folder
whose files do not match it is not a checkpoint. Folders are built beside their place
and swapped in (`files.folder_swap`), and resume takes the newest folder that verifies
among `last/` and what a crash between the two renames can leave (`.last.new`,
`.last.old`).
"""
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_weights, read_state_dict
from .files import atomic_write, folder_candidates, folder_swap, write_json
from .trainstate import TrainState, set_rng_state

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
MODEL_DIR = "model"
LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process is training into the same output folder."""


# ---- the lock -------------------------------------------------------------------------

class RunLock:
    """An exclusive `flock` on `<output_dir>/.lock`. The kernel drops it when the holder
    dies, so a lock left by a killed run is never mistaken for a live one."""

    def __init__(self, output_dir: Path):
        self.file = Path(output_dir) / LOCK_FILE
        self.fd = None

    def acquire(self) -> "RunLock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.file.parent} is in use by {holder}; wait for that run to finish, "
                                 "or train into another --output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---- writing --------------------------------------------------------------------------

def save_checkpoint(directory: Path, model, state: dict | None = None) -> None:
    """Write `model` (and, for a resumable checkpoint, the trainer `state`) to `directory`,
    whole or not at all."""
    with folder_swap(directory) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        if state is not None:
            atomic_write(tmp / STATE_FILE, lambda f: torch.save(state, f))
        write_manifest(tmp)


def write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    write_json(folder / MANIFEST_FILE, {"files": files})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- reading --------------------------------------------------------------------------

def verify(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its size and hash, else why not."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST_FILE} (an unfinished write)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest} is damaged"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta.get("size") or _sha256(path) != meta.get("sha256"):
            return f"{path} does not match {MANIFEST_FILE} (changed or damaged)"
    return None


def find_checkpoint(directory: Path, resumable: bool = True) -> Path:
    """The newest complete checkpoint that `directory` (e.g. <output_dir>/last) or a crash
    beside it left, verified. `resumable`: it must hold the trainer state."""
    problems, found = [], []
    for folder in folder_candidates(directory):
        why = verify(folder)
        if why is None and resumable and not (folder / STATE_FILE).is_file():
            why = f"{folder} has no {STATE_FILE} (a model, not a resumable checkpoint)"
        if why is None:
            found.append((load_state(folder)["state"]["step"] if resumable else 0, folder))
        else:
            problems.append(why)
    if not found:
        detail = "; ".join(problems) or f"{directory} does not exist"
        raise CheckpointError(f"no complete checkpoint at {directory}: {detail}")
    return max(found, key=lambda item: item[0])[1]


def load_state(folder: Path) -> dict:
    """The trainer state of a checkpoint folder: tensors and plain data only."""
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickler refusing a class lands here too
        raise CheckpointError(f"{folder / STATE_FILE}: cannot read it as tensors and plain data "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); it was not written "
                              "by this version of bertcore, or was tampered with") from None


def load_model_weights(model, folder: Path) -> None:
    """Copy the weights of `folder/model/` into `model` (a TaskModel with the same heads)."""
    root = folder / MODEL_DIR
    load_weights(model.encoder, read_state_dict(root / "encoder" / "model.safetensors"),
                 str(root / "encoder" / "model.safetensors"), strict=True)
    saved = sorted(p.name for p in (root / "heads").iterdir()) if (root / "heads").is_dir() else []
    if saved != sorted(model.heads):
        raise CheckpointError(f"{root} holds heads {saved}, this model has {sorted(model.heads)}; resume with "
                              "the heads the run was started with")
    for name, head in model.heads.items():
        file = root / "heads" / name / "head.safetensors"
        load_weights(head, read_state_dict(file), str(file), strict=True)


def resume(directory, model, optimizer, scheduler, identity: dict) -> TrainState:
    """Restore a run from the newest complete checkpoint at `directory`: weights, optimizer,
    scheduler, RNG states; refused, with the differences listed, when `identity` (settings,
    world size, data, heads) is not what the checkpoint recorded."""
    folder = find_checkpoint(Path(directory))
    payload = load_state(folder)
    saved = payload.get("run", {})
    changed = [f"{k}: {saved.get(k)!r} then, {identity[k]!r} now" for k in ("world", "data", "heads")
               if saved.get(k) != identity[k]]
    changed += [f"{k}: {saved.get('args', {}).get(k)!r} then, {v!r} now" for k, v in identity["args"].items()
                if saved.get("args", {}).get(k) != v]
    if changed:
        raise ValueError(f"cannot resume from {folder}: the run differs from the one that wrote it "
                         f"({'; '.join(changed)}); resume with the original settings and data, or start a new "
                         "run in another output folder")
    load_model_weights(model, folder)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    logger.info("resumed from %s at step %d", folder, payload["state"]["step"])
    return TrainState.from_dict(payload["state"])
