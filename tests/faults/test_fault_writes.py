"""Fault suite, the writes themselves: a full disk (a real tmpfs filled up, or a write made
to fail halfway), a failed fsync or rename, a save caught between its renames. What is
left on disk is the old file (folder) or the new one, the error names what the user
asked for and the fix, and what a checkpoint follows is on disk before it."""
import dataclasses
import errno
import os
import sys
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore import files, pretraining, runfolder
from bertcore.files import WriteError
from bertcore.runfolder import kept_checkpoints, save_checkpoint, verify
from bertcore.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))
import toy  # noqa: E402
from test_fault_cli import fill  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "toy_plugin")


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


def weights_of(folder) -> dict:
    loaded = bertcore.TaskModel.from_pretrained(folder)
    return {k: v.clone() for k, v in loaded.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_inside_a_folder_swap_names_the_folder_asked_for(small_disk, tok):
    """Before: `cannot write <disk>/.model.new/encoder/config.json`, a folder the user never
    asked for and cannot find (it is removed on the way out)."""
    target = small_disk / "model"
    toy.model(tok, seed=0).save_pretrained(target)
    old = weights_of(target)
    filler = fill(small_disk)
    with pytest.raises(WriteError) as caught:
        toy.model(tok, seed=1).save_pretrained(target)
    message = str(caught.value)
    assert f"cannot write {target}/" in message and ".model.new" not in message, message
    assert "No space left on device" in message and "the disk is full" in message, message
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == ["model"]          # no temp folder left
    assert same(weights_of(target), old)


def test_a_full_disk_under_torch_save_says_the_disk_is_full(small_disk):
    """Before: torch's `unexpected pos 704 vs 598` and `is the disk full or the folder
    read-only?`: the hint guessed where the disk could have said it."""
    fill(small_disk)
    with pytest.raises(WriteError) as caught:
        files.atomic_write(small_disk / "state.pt", lambda tmp: torch.save({"a": torch.zeros(100_000)}, tmp))
    assert f"cannot write {small_disk / 'state.pt'}" in str(caught.value)
    assert "the disk is full; free space and run again" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("step", ["fsync", "rename"])
def test_a_failed_fsync_or_rename_of_a_swap_keeps_the_old_folder_and_names_it(tmp_path, tok, monkeypatch, step):
    """Before: a bare `[Errno 28] No space left on device` (fsync) or one naming
    `.model.new` and `.model.old` (rename); a failed second rename left no `model/` at all,
    the old one sitting at `.model.old` until some later save put it back."""
    target = tmp_path / "model"
    toy.model(tok, seed=0).save_pretrained(target)
    old = weights_of(target)
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name == ".model.new":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    def replace(src, dst):
        if step == "rename" and Path(src).name == ".model.new":
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync if step == "fsync" else real_fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(WriteError) as caught:
        toy.model(tok, seed=1).save_pretrained(target)
    monkeypatch.undo()
    message = str(caught.value)
    assert f"cannot write {target}" in message and ".model." not in message and "the disk is full" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert same(weights_of(target), old)


def checkpoint(folder, tok, step, keep=3, seed=0):
    save_checkpoint(folder, toy.model(tok, seed=seed), {"state": {"step": step}}, keep=keep)


def test_a_kept_checkpoint_cut_short_leaves_no_half_folder(tmp_path, tok, monkeypatch):
    """keep > 1 keeps the previous last/ as checkpoint-<step>/ (hard links, or copies where
    a filesystem has none). Before: a copy that hit a full disk left a checkpoint-2/ of
    half the files, and the error was a bare `[Errno 28]` naming no file."""
    last = tmp_path / "last"
    checkpoint(last, tok, 2)
    real_link, calls = runfolder._link, {"n": 0}

    def link(source, target):            # the copy fallback, on a disk that fills up at the third file
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_link(source, target)

    monkeypatch.setattr(runfolder, "_link", link)
    with pytest.raises(WriteError) as caught:
        checkpoint(last, tok, 4, seed=1)
    message = str(caught.value)
    assert f"cannot write {tmp_path / 'checkpoint-2'}" in message and "the disk is full" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]            # no checkpoint-2/ of half the files
    assert verify(last) is None and runfolder.checkpoint_step(last) == 2
    monkeypatch.undo()
    checkpoint(last, tok, 4, seed=1)                                        # space again: kept whole
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert verify(tmp_path / "checkpoint-2") is None


def test_a_checkpoint_caught_between_its_renames_is_still_kept(tmp_path, tok):
    """A save of step 4 killed between its renames leaves `.last.old` (step 2) and a complete
    `.last.new` (step 4). Before: the next save (step 6, keep=3) found no last/ to keep, so
    step 4 was recovered and then replaced: gone, though three checkpoints were asked for."""
    last = tmp_path / "last"
    checkpoint(last, tok, 2)
    checkpoint(tmp_path / "elsewhere" / "last", tok, 4, keep=1, seed=1)
    os.replace(last, tmp_path / ".last.old")                                 # where the kill left them
    os.replace(tmp_path / "elsewhere" / "last", tmp_path / ".last.new")
    checkpoint(last, tok, 6, seed=2)
    assert runfolder.checkpoint_step(last) == 6
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert verify(tmp_path / "checkpoint-4") is None


def test_metrics_are_on_disk_before_the_checkpoint_that_follows_them(tmp_path, tok, monkeypatch):
    """A checkpoint is fsynced; metrics.jsonl was only flushed. Before: after a power cut a
    run resumed from step N lacked the log lines of steps up to N for good (those steps do
    not run again), though README says metrics.jsonl holds each step once."""
    real_fsync, synced, behind = os.fsync, {}, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        log = tmp_path / "run" / "metrics.jsonl"
        if ".last.new" in name and log.exists() and synced.get(str(log), -1) < log.stat().st_size:
            behind.append(name)                       # a checkpoint made durable before the lines it follows
        real_fsync(fd)
        if os.path.isfile(name):
            synced[name] = os.path.getsize(name)

    monkeypatch.setattr(os, "fsync", fsync)
    args = toy.args(tmp_path / "run", max_steps=4, eval_every=2, logging_steps=1)
    model = toy.model(tok)
    Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8, seed=1), args=args).fit()
    assert (tmp_path / "run" / "last").is_dir() and str(tmp_path / "run" / "metrics.jsonl") in synced
    assert behind == []


def test_a_tokenizer_save_cut_short_in_pretraining_keeps_the_old_vocabulary(tmp_path, monkeypatch):
    """pretrain writes <output>/tokenizer file by file. Before: a full disk at vocab.txt left
    the new tokenizer.json beside the old vocab.txt: two vocabularies in one folder."""
    folder = tmp_path / "tokenizer"
    docs = [[f"{w} {v} the film" for w in toy.WORDS[:6]] for v in toy.WORDS[6:]]
    pretraining._train_tokenizer(docs, 60, True, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = files.atomic_write

    def full_at_vocab(path, write, mode=0o666):
        def no_space(tmp):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, no_space if Path(path).name == "vocab.txt" else write, mode)

    monkeypatch.setattr(files, "atomic_write", full_at_vocab)
    other = [[f"{w}{v} x{w} y{v}" for w in "abcdefgh"] for v in "pqrstuvw"]
    with pytest.raises(WriteError, match=f"cannot write {folder}/vocab.txt: No space left on device"):
        pretraining._train_tokenizer(other, 60, True, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_an_encoder_save_cut_short_keeps_the_older_save_whole(tmp_path, monkeypatch):
    """BertEncoder.save_pretrained wrote config.json before the weights: a full disk left
    the new config beside the older save's weights, and an encoder of the same shapes
    loaded from them without a word (here the older weights under the new activation)."""
    from bertcore import checkpoint
    cfg = bertcore.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=16)
    old = bertcore.BertEncoder(cfg)
    old.save_pretrained(tmp_path / "enc")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_tensors", full_disk)
    with pytest.raises(OSError):
        bertcore.BertEncoder(dataclasses.replace(cfg, hidden_act="relu")).save_pretrained(
            tmp_path / "enc")
    loaded = bertcore.BertEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config.hidden_act == "gelu"                            # was: relu, beside the gelu save's weights
    assert same(loaded.state_dict(), old.state_dict())
