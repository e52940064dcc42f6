"""A training run's output folder: its lock, and checkpoints that survive any crash.

    <output_dir>/.lock            held (flock) while a Trainer runs; names its holder
    <output_dir>/last/            newest checkpoint: model/ + trainer_state.pt + manifest.json
    <output_dir>/best/            best model by the eval metric: model/ + manifest.json
                                  (hard links to last/'s files when it is the newest)
    <output_dir>/checkpoint-<N>/  older resumable checkpoints, with save_total_limit > 1
    <output_dir>/model/           the final model, where `pretrain` and the CLI save it

A new run (not resuming) into a folder that holds an earlier run's checkpoints or
model is refused, unless told to overwrite them (`check_new_run`): they would otherwise
be mixed with the new run's, or replaced without a word.

`model/` is what `TaskModel.save_pretrained` writes (every weight once; it loads with
`TaskModel.from_pretrained`; a frozen encoder loaded from a folder is pointed at, not
copied). `trainer_state.pt` holds optimizer, scheduler, RNG and loop state as tensors
and plain data, read with `torch.load(weights_only=True)`; a finished run's keeps no
optimizer state, which only continuing needs.
`manifest.json`, written last, lists every file with its size and SHA-256; a folder
whose files do not match it is not a checkpoint. Folders are built beside their place
and swapped in (`files.folder_swap`), and resume takes the newest folder that verifies
among `last/`, what a crash between the two renames can leave (`.last.new`,
`.last.old`) and the kept `checkpoint-<N>/`.
"""
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, file_sha256, load_weights, read_state_dict
from .files import atomic_write, folder_candidates, folder_swap, recover_folder, remove_folder, write_json
from .taskmodel import MODEL_FILE
from .trainstate import TrainState, set_rng_state

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
MODEL_DIR = "model"
LOCK_FILE = ".lock"


class RunLockedError(BlockingIOError):
    """Another process is training into the same output folder."""


# ---- the lock -------------------------------------------------------------------------

class RunLock:
    """An exclusive `flock` on `<output_dir>/.lock`. The kernel drops it when the holder
    dies, so a lock left by a killed run is never mistaken for a live one.

    `joinable=True` lets later RunLocks of the same thread on the same folder join it
    instead of being refused: `pretrain` and the CLI hold one across the steps around
    their Trainer (tokenizer, fit, final model/), so no other run gets in between. A plain
    holder stays exclusive, also against this process."""

    _joinable: dict[tuple, "RunLock"] = {}   # (resolved lock file, thread) -> its joinable holder

    def __init__(self, output_dir: Path, joinable: bool = False):
        self.file = Path(output_dir) / LOCK_FILE
        self.joinable, self.fd, self.host, self.key = joinable, None, None, None

    def acquire(self) -> "RunLock":
        if self.file.parent.exists() and not self.file.parent.is_dir():
            raise NotADirectoryError(f"output folder {self.file.parent} is a file; name a folder (it is created "
                                     "if missing)")
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.key = (str(self.file.resolve()), threading.get_ident())   # once: a chdir must not change it
        host = RunLock._joinable.get(self.key)
        if host is not None and host.fd is not None:   # the outer holder releases the flock
            self.host = host
            return self
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
        if self.joinable:
            RunLock._joinable[self.key] = self
        return self

    def release(self) -> None:
        if self.host is not None:
            self.host = None
        elif self.fd is not None:
            if RunLock._joinable.get(self.key) is self:
                del RunLock._joinable[self.key]
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---- a new run in a used folder ---------------------------------------------------------

FINAL_MODEL_DIR = "model"                          # where `pretrain` and the CLI save the final model
CHECKPOINT_FOLDERS = ("last", "best", "checkpoint-*")   # what a Trainer saving checkpoints writes


def _folders(output_dir: Path, names) -> list[Path]:
    """The folders `names` (globs allowed) stand for in `output_dir`, with what a crash
    between two renames leaves beside them."""
    found = []
    for name in names:
        if "*" in name:
            found += sorted((p for p in output_dir.glob(name) if p.is_dir()), key=_step_of)
        else:
            found += folder_candidates(output_dir / name)
    return found


def _made_by_bertcore(folder: Path) -> bool:
    """A checkpoint (manifest.json), a saved TaskModel (taskmodel.json), or a swap's leftover."""
    return folder.name.startswith(".") or (folder / MANIFEST_FILE).is_file() or (folder / MODEL_FILE).is_file()


def _within(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it, spelled either way: as given (a Hub snapshot's
    files are symlinks into blobs/) or resolved (`..`, a symlinked output folder)."""
    return any(a == b or b in a.parents for a, b in ((path.absolute(), folder.absolute()),
                                                       (path.resolve(), folder.resolve())))


def check_new_run(output_dir: Path, writes, overwrite: bool, inputs=()) -> None:
    """Before a new run that writes the folders `writes` in `output_dir`: an earlier run's
    are refused, or with `overwrite` removed; a folder of that name bertcore did not make
    is always refused, and so is a folder holding one of `inputs` ((what, path) pairs: the
    encoder's weights, a tokenizer), which the run would delete or replace."""
    output_dir = Path(output_dir)
    found = _folders(output_dir, writes)
    for what, path in inputs:
        folder = next((f for f in found if _within(Path(path), f)), None)
        if folder is not None:
            raise ValueError(f"{what} lies inside {folder}, which this run would replace; copy it out of "
                             f"{output_dir} first, or train into another output folder")
    foreign = [f for f in found if not _made_by_bertcore(f)]
    if foreign:
        raise FileExistsError(f"{foreign[0]} is in the way: this run writes a {foreign[0].name}/ there, and "
                              "bertcore did not make this one; move it, or train into another output folder")
    if not found:
        return
    if not overwrite:
        names = ", ".join(f"{p.name}/" for p in found[:4]) + (", ..." if len(found) > 4 else "")
        try:
            find_checkpoint(output_dir / "last")
            resume = "continue it with resume (--resume), "
        except CheckpointError:
            resume = ""
        raise FileExistsError(f"{output_dir} already holds a run ({names}); {resume}train into another output "
                              "folder, or overwrite it (overwrite_output_dir=True, --overwrite)")
    for folder in found:   # a symlink in the run folder is unlinked: what it points at is not the run's
        folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)
    logger.info("removed the earlier run in %s (%s)", output_dir, ", ".join(p.name for p in found))


# ---- writing --------------------------------------------------------------------------

def save_checkpoint(directory: Path, model, state: dict | None = None, save_encoder: bool = True,
                    keep: int = 1) -> None:
    """Write `model` (and, for a resumable checkpoint, the trainer `state`) to `directory`,
    whole or not at all. `save_encoder=False`: a frozen encoder is pointed at, not copied.
    `keep` > 1 keeps that many resumable checkpoints: the previous `directory` is kept
    beside it as `checkpoint-<step>/`, and the oldest beyond `keep` are removed."""
    directory = Path(directory)
    recover_folder(directory)   # a save killed between its renames: that checkpoint is the one to keep
    previous = checkpoint_step(directory) if keep > 1 else None
    if previous is not None:   # resume verifies it before use, like every candidate
        # swapped in whole: a kill or a full disk (copies, where hard links fail) never leaves half a checkpoint
        with folder_swap(directory.with_name(f"checkpoint-{previous}")) as older:
            for file in sorted(p for p in directory.rglob("*") if p.is_file()):   # hard links: no bytes written
                (older / file.relative_to(directory)).parent.mkdir(parents=True, exist_ok=True)
                _link(file, older / file.relative_to(directory))
    with folder_swap(directory) as tmp:
        model.save_pretrained(tmp / MODEL_DIR, save_encoder=save_encoder)
        if state is not None:
            atomic_write(tmp / STATE_FILE, lambda f: torch.save(state, f))
        write_manifest(tmp, step=None if state is None else state["state"]["step"])
    for stale in kept_checkpoints(directory.parent)[:-(keep - 1) or None]:
        remove_folder(stale)


def kept_checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-<step>/` folders of `output_dir`, oldest first; other names (a user's
    `checkpoint-mine/` copy) are not ours to prune or resume from."""
    return sorted((p for p in Path(output_dir).glob("checkpoint-*") if _step_of(p) >= 0), key=_step_of)


def _link(source, target) -> None:
    """A hard link, or a copy on a filesystem without them."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_checkpoint(source: Path, directory: Path) -> None:
    """Make `directory` the model of checkpoint `source` (best/ = last/ when the newest
    evaluation is the best): hard links, so no byte is written twice."""
    with folder_swap(directory) as tmp:
        for file in (Path(source) / MODEL_DIR).rglob("*"):
            target = tmp / file.relative_to(source)
            if file.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                _link(file, target)
        write_manifest(tmp, known=_manifest(Path(source)).get("files", {}))  # same files: no second hashing


def _step_of(folder: Path) -> int:
    step = folder.name.rsplit("-", 1)[-1]
    return int(step) if step.isascii() and step.isdigit() else -1


def write_manifest(folder: Path, step: int | None = None, known: dict | None = None) -> None:
    """manifest.json: every file's size and SHA-256 (taken from `known`, the manifest of
    the files' hard-linked twins, where it lists them) and the checkpoint's step."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        name = path.relative_to(folder).as_posix()
        files[name] = (known or {}).get(name) or {"size": path.stat().st_size, "sha256": file_sha256(path)}
    write_json(folder / MANIFEST_FILE, {"step": step, "files": files})


# ---- reading --------------------------------------------------------------------------

def _manifest(folder: Path) -> dict:
    """The folder's manifest.json, or {} when there is none or it is not readable."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {}


def checkpoint_step(folder: Path) -> int | None:
    """The step a resumable checkpoint's manifest records (unverified), or None."""
    step = _manifest(folder).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def verify(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its size and hash, else why not."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST_FILE} (an unfinished write)"
    files = _manifest(folder).get("files")
    if files is None:
        return f"{manifest} is damaged"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta.get("size") or file_sha256(path) != meta.get("sha256"):
            return f"{path} does not match {MANIFEST_FILE} (changed or damaged)"
    return None


def find_checkpoint(directory: Path, resumable: bool = True) -> Path:
    """The newest complete checkpoint that `directory` (e.g. <output_dir>/last) or a crash
    beside it left, verified. `resumable`: it must hold the trainer state."""
    problems, found = [], []
    # last/ stands for the run's newest checkpoint; a folder named explicitly is that one
    kept = kept_checkpoints(Path(directory).parent) if resumable and Path(directory).name == "last" else []
    for folder in folder_candidates(directory) + kept[::-1]:
        why = verify(folder)
        if why is None and resumable and (checkpoint_step(folder) is None or not (folder / STATE_FILE).is_file()):
            why = f"{folder} has no {STATE_FILE} (a model, not a resumable checkpoint)"
        if why is None:
            found.append((checkpoint_step(folder) if resumable else 0, folder))
        else:
            problems.append(why)
    if not found:
        detail = "; ".join(problems) or f"{directory} does not exist"
        raise CheckpointError(f"no complete checkpoint at {directory}: {detail}")
    return max(found, key=lambda item: item[0])[1]


def load_state(folder: Path) -> dict:
    """The trainer state of a checkpoint folder: tensors and plain data only, in the shape
    `Trainer` saves it (else a CheckpointError naming the key)."""
    try:
        payload = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickler refusing a class lands here too
        raise CheckpointError(f"{folder / STATE_FILE}: cannot read it as tensors and plain data "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); it was not written "
                              "by this version of bertcore, or was tampered with") from None
    problem = _payload_problem(payload)
    if problem:
        raise CheckpointError(f"{folder / STATE_FILE}: {problem}; it was not written by this version of bertcore, "
                              "or was tampered with: resume from another checkpoint, or start a new run")
    return payload


def _payload_problem(payload) -> str | None:
    """What is wrong with a loaded trainer state's layout, or None."""
    if not isinstance(payload, dict):
        return f"holds a {type(payload).__name__}, not a dict"
    for key, kind in (("state", dict), ("rng", dict), ("run", dict), ("optimizer", dict), ("scheduler", dict)):
        if not isinstance(payload.get(key, {}), kind) or (key in ("state", "rng") and key not in payload):
            return f"key {key!r} is {'missing' if key not in payload else type(payload[key]).__name__}, " \
                   f"expected a {kind.__name__}"
    state = payload["state"]
    for key in ("step", "epoch", "position", "bad_evals"):
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"state key {key!r} is {value!r}, expected a whole number >= 0"
    if not isinstance(state.get("history", []), list) or not isinstance(state.get("best_step") or 0, int) \
            or not isinstance(state.get("best") or 0, (int, float)):
        return "state keys 'history' (a list), 'best' (a number) or 'best_step' (a step) have other types"
    if not {"python", "numpy", "torch"} <= set(payload["rng"]):
        return f"key 'rng' holds {sorted(payload['rng'])}, expected python, numpy and torch states"
    ranks = payload.get("rank_rng", [])   # the other ranks' RNG states, under torchrun
    if not isinstance(ranks, list) or not all(isinstance(r, dict) and {"python", "numpy", "torch"} <= set(r)
                                              for r in ranks):
        return "key 'rank_rng' is not a list of python, numpy and torch states"
    return None


def load_model_weights(model, folder: Path) -> None:
    """Copy the weights of `folder/model/` into `model` (a TaskModel with the same heads)."""
    root = folder / MODEL_DIR
    if (root / "encoder").is_dir():
        load_weights(model.encoder, read_state_dict(root / "encoder" / "model.safetensors"),
                     str(root / "encoder" / "model.safetensors"), strict=True)
    else:  # a frozen encoder, pointed at: it must be the one this model was built on
        saved = json.loads((root / MODEL_FILE).read_text(encoding="utf-8")).get("encoder", {})
        if saved.get("sha256") != model.encoder_reference()["sha256"]:
            raise CheckpointError(f"{root} was trained on the frozen encoder {saved.get('path')}, not on the one "
                                  f"this model has ({model.encoder_reference()['path']}); load that encoder")
    saved = sorted(p.name for p in (root / "heads").iterdir()) if (root / "heads").is_dir() else []
    if saved != sorted(model.heads):
        raise CheckpointError(f"{root} holds heads {saved}, this model has {sorted(model.heads)}; resume with "
                              "the heads the run was started with")
    for name, head in model.heads.items():
        file = root / "heads" / name / "head.safetensors"
        load_weights(head, read_state_dict(file), str(file), strict=True)


def _head_changes(then: dict, now: dict) -> list[str]:
    """The heads added, removed or with other options since a checkpoint, one phrase each
    (the whole configs, then and now, ran to a thousand characters)."""
    changes = [f"head {n!r} added" for n in now if n not in then]
    changes += [f"head {n!r} removed" for n in then if n not in now]
    for n in (n for n in now if n in then and now[n] != then[n]):
        keys = sorted(k for k in {*now[n], *then[n]} if now[n].get(k) != then[n].get(k))
        changes += [f"head {n!r} {k}: {then[n].get(k)!r} then, {now[n].get(k)!r} now" for k in keys]
    return changes


def resume(directory, model, optimizer, scheduler, identity: dict, best: Path | None = None,
           rank: int = 0) -> TrainState:
    """Restore a run from the newest complete checkpoint at `directory`: weights, optimizer,
    scheduler, RNG states; refused, with the differences listed, when `identity` (settings,
    world size, data, heads, the encoder's shape) is not what the checkpoint recorded. `best`: the run's best/
    folder, put right when a crash came between the checkpoint that is the best and its link.
    The state is `finished` when the checkpoint ended its run (the last step, early stopping).
    `rank` (under torchrun) takes that rank's own RNG states."""
    folder = find_checkpoint(Path(directory))
    payload = load_state(folder)
    saved = payload.get("run", {})
    changed = [f"data: {saved.get('data')!r} then, {identity['data']!r} now"] if saved.get("data") != identity["data"] \
        else []
    changed += _head_changes(saved.get("heads") or {}, identity["heads"])
    if saved.get("world") != identity["world"]:   # the data plan splits each global batch by it
        changed.insert(0, f"processes (world size): {saved.get('world')} then, {identity['world']} now (run it "
                          f"under torchrun --nproc_per_node={saved.get('world')})")
    then = saved.get("args", {})   # a setting an older bertcore did not record is not held against it
    changed += [f"{k}: {then[k]!r} then, {v!r} now" for k, v in identity["args"].items() if k in then and then[k] != v]
    then = saved.get("encoder", {})
    changed += [f"encoder {k}: {then[k]!r} then, {v!r} now" for k, v in identity.get("encoder", {}).items()
                if k in then and then[k] != v]
    if changed:
        raise ValueError(f"cannot resume from {folder}: the run differs from the one that wrote it "
                         f"({'; '.join(changed)}); resume with the original settings and data, or start a new "
                         "run in another output folder")
    load_model_weights(model, folder)
    if "optimizer" not in payload and not payload.get("complete"):   # a finished run's keeps none
        raise CheckpointError(f"{folder / STATE_FILE} holds no optimizer state; it cannot continue a run")
    if rank > len(payload.get("rank_rng", [])) and not payload.get("complete"):   # rank 0's alone: not its own
        # an older bertcore's checkpoint: the run goes on (nothing is lost), but not draw for draw
        logger.warning("%s holds no RNG state for rank %d (an older bertcore kept rank 0's alone): the run "
                       "continues with rank 0's, so its dropout and masking will not repeat the run's exactly",
                       folder / STATE_FILE, rank)
    key = None
    try:
        for key in ("optimizer", "scheduler", "rng", "state"):
            value = payload.get(key)
            if key == "rng":
                ranks = payload.get("rank_rng", [])   # lacking only where the run had ended: nothing to draw
                set_rng_state(ranks[rank - 1] if 0 < rank <= len(ranks) else value)
            elif key == "state":
                state = TrainState.from_dict(value)
            elif value is not None:
                (optimizer if key == "optimizer" else scheduler).load_state_dict(value)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: its {key!r} does not fit this run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); resume from another "
                              "checkpoint, or start a new run") from None
    state.finished = bool(payload.get("complete"))
    if best is not None and state.best_step is not None and state.best_step == state.step:
        _restore_best(folder, Path(best))
    logger.info("resumed from %s at step %d%s", folder, state.step,
                " (the run had ended there: nothing left to train)" if state.finished else "")
    return state


def _restore_best(folder: Path, best: Path) -> None:
    """Make `best` the model of `folder` unless it already is: a run killed after writing
    the checkpoint that is its best, before linking best/ to it, left the previous best."""
    files = {k: v for k, v in _manifest(folder).get("files", {}).items() if k.startswith(f"{MODEL_DIR}/")}
    if _manifest(best).get("files") != files:
        logger.info("best/ did not hold the best model (step %s); linked it again", checkpoint_step(folder))
        link_checkpoint(folder, best)
