"""The one way bertcore writes files: atomic, durable, with the umask's permissions.

    atomic_write(path, write)      write(tmp_path) fills a temp file beside `path`;
                                   fsync, rename over `path`, fsync the folder
    write_bytes / write_text / write_json / save_tensors   the common cases
    fsync_file(path)               after appending to a log (metrics.jsonl) in place: not atomic, so its
                                   readers skip a last line a kill or a full disk cut short
    folder_swap(path)              build a whole folder beside `path`, then swap it in
    remove_folder(path)            remove a written folder; a symlink there is unlinked, not followed

A crash (kill -9, power cut) at any point leaves either the old file (folder) or the
new one, never a mix; a failed write (disk full, read-only folder) leaves the old one
and raises `WriteError` (an OSError) naming the file. Temp names start with "." and
end with ".tmp" (files) or ".new"/".old" (folders); `recover_folder` puts back a
folder that a crash caught between its two renames.
"""
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


class WriteError(OSError):
    """A file could not be written (disk full, read-only, permissions); nothing was replaced."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation inside `directory` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None], mode: int = 0o666) -> Path:
    """Call `write(tmp)` to fill a temp file next to `path`, then make it `path`
    atomically and durably. The file gets `mode & ~umask` like `open(..., "w")`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:  # safetensors and torch wrap OSError in their own types
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        error = WriteError(f"cannot write {path}: {reason}; nothing was replaced ({write_hint(path, err)})")
        error.errno = getattr(err, "errno", None)
        raise error from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def file_above(path) -> Path | None:
    """The folder on `path`'s way that is a file (a.jsonl in a.jsonl/out.jsonl): then no
    folder can make `path` exist. None when there is none."""
    return next((parent for parent in Path(path).parents if parent.is_file()), None)


def write_hint(path: Path, err: Exception) -> str:
    """What to check after a failed write: a file where a folder must be, else by errno."""
    blocker = file_above(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder; fix the path"
    code = getattr(err, "errno", None) or getattr(err.__cause__, "errno", None)
    if code is None and _no_space(path):   # safetensors and torch.save bury ENOSPC in their own text
        code = errno.ENOSPC
    if code == errno.ENOSPC:
        return "the disk is full; free space and run again"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the folder is read-only or not yours; write somewhere else"
    return "is the disk full or the folder read-only?"


def _no_space(path: Path) -> bool:
    """The filesystem that holds `path` (its nearest existing folder) has no free block left."""
    folder = next((p for p in Path(path).parents if p.is_dir()), None)
    try:
        return folder is not None and os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def write_bytes(path, data: bytes) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, data) -> Path:
    """Pretty JSON with a final newline; non-finite floats are refused (they are not JSON)."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def save_tensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    """A safetensors file of CPU copies of `tensors`. Shared storage (tied weights) is
    cloned apart, which safetensors requires; the caller decides what is stored once."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata or {"format": "pt"}))


def fsync_file(path, created: bool = False) -> None:
    """Make what was written to `path` durable (any descriptor's fsync syncs the file);
    `created`: the file is new, so its folder's entry must be made durable too."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    if created:
        fsync_dir(Path(path).parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fsync_file(os.path.join(folder, name))
        fsync_dir(Path(folder))


@contextmanager
def folder_swap(path):
    """Yield a fresh temp folder beside `path`; on a clean exit, fsync it and swap it in
    for `path` (the old folder is moved aside first and removed last). On an error the
    temp folder is removed and `path` is untouched.

    Between the two renames a crash leaves the old folder at `.<name>.old` and the new
    one complete at `.<name>.new`; `recover_folder` finds them. A failed write raises a
    WriteError naming `path` (and the file in it), never the temp folder."""
    path = Path(path)
    if path.is_file() and not path.is_symlink():   # swapping would move a file of the user's aside, then delete it
        raise FileExistsError(f"{path} is a file, in the way of the folder of that name; move it elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    new, old = _new(path), _old(path)
    remove_folder(new)
    new.mkdir(mode=0o777)
    try:
        yield new
    except BaseException as err:
        remove_folder(new)
        if isinstance(err, OSError) and (isinstance(err, WriteError) or str(new) in str(err)
                                         or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)):
            raise _named(err, new, path) from err   # not an OSError the body meant (a folder in the way)
        raise
    try:
        _fsync_tree(new)
        remove_folder(old)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(new, path)
        fsync_dir(path.parent)
    except BaseException as err:
        remove_folder(new)
        recover_folder(path)   # the second rename failed: the old folder goes back in place
        if isinstance(err, OSError):
            raise _named(err, new, path) from err
        raise
    remove_folder(old)


def _named(err: OSError, new: Path, path: Path) -> WriteError:
    """`err` naming what the user asked for where it named the temp folder `new`
    (`.model.new/encoder/config.json` reads `model/encoder/config.json`): `new` is removed,
    and a user looking for it finds nothing."""
    if isinstance(err, WriteError):
        message = str(err)
    else:   # fsync, a rename or a copy: bare OSErrors
        target = err.filename if err.filename and str(new) in str(err.filename) else path
        message = f"cannot write {target}: {err.strerror or err}; nothing was replaced ({write_hint(path, err)})"
    error = WriteError(message.replace(str(new), str(path)))
    error.errno = err.errno
    return error


def remove_folder(path) -> None:
    """Remove a folder bertcore wrote, if it is there. A symlink (or file) in its place is
    unlinked, never followed: rmtree refuses symlinks, and one left behind would block the
    next rename onto that name."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _new(path: Path) -> Path:
    return path.with_name(f".{path.name}.new")


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_folder(path) -> None:
    """Undo a crash between `folder_swap`'s two renames: `path` is gone and the old folder
    sits at `.<name>.old`. The new one was complete before the old was moved aside, so it
    becomes `path`; without it, the old one comes back."""
    path = Path(path)
    new, old = _new(path), _old(path)
    if path.exists() or not old.is_dir():
        return
    os.replace(new if new.is_dir() else old, path)
    fsync_dir(path.parent)


def folder_candidates(path) -> list[Path]:
    """Where a swapped folder's content may be after a crash, newest first: the folder
    itself, the complete new one not yet renamed, the old one moved aside."""
    path = Path(path)
    return [p for p in (path, _new(path), _old(path)) if p.is_dir()]
