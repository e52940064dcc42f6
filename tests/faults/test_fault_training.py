"""Fault suite, training and resume: a run stopped early and resumed, a kill between a
checkpoint and its best/ link, a named checkpoint to resume from, symlinks and a copy of
the user's in the run folder, a filesystem without hard links, a trainer state from
another version, a disk that fills in the middle of a log line. Each ends where an
uninterrupted run would, or says in one line which file and key are wrong."""
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import bertcore
import bertcore.reporting as reporting
import bertcore.training as training
from bertcore.checkpoint import CheckpointError
from bertcore.files import folder_swap
from bertcore.runfolder import verify
from bertcore.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "core"))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "toy_plugin")


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


def trainer(tok, out, **kw):
    return Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), eval=toy.examples(8, seed=1),
                   args=toy.args(out, **{"max_steps": 4, "eval_every": 2, **kw}))


def killed_after(monkeypatch, step):
    """Trainer._save raises KeyboardInterrupt once the checkpoint of `step` is written."""
    save = Trainer._save

    def save_then_die(self, state, *a, **kw):
        save(self, state, *a, **kw)
        if state.step == step:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_save", save_then_die)


def digest(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_an_early_stopped_run_resumed_trains_no_further(tmp_path, tok, monkeypatch):
    """Its last checkpoint has no optimizer state: resuming it must not go on with a fresh
    optimizer and a schedule warming up again (before: one more step and evaluation)."""
    monkeypatch.setattr(Trainer, "evaluate", lambda self, eval=None: {"accuracy": 0.5, "loss": 1.0})
    first = trainer(tok, tmp_path, max_steps=8, eval_every=1, early_stopping_patience=1)
    history = first.fit()
    assert first.state.step == 2 and len(history) == 2
    saved = digest(tmp_path / "last")
    again = trainer(tok, tmp_path, max_steps=8, eval_every=1, early_stopping_patience=1)
    assert again.fit(resume_from=True) == history and again.state.step == 2
    assert digest(tmp_path / "last") == saved


def test_best_is_put_right_when_a_kill_came_between_the_checkpoint_and_its_link(tmp_path, tok, monkeypatch):
    """Killed after last/ held the new best and before best/ was linked to it: the resumed
    run's best/ (and load_best_at_end) is that model, not the previous best."""
    losses = iter(range(10, 0, -1))           # each evaluation improves on the one before
    monkeypatch.setattr(Trainer, "evaluate", lambda self, eval=None: {"accuracy": 0.5, "loss": next(losses)})
    link, links = training.link_checkpoint, []

    def link_or_die(source, directory):
        links.append(directory)
        if len(links) == 2:
            raise KeyboardInterrupt           # last/ at step 4 is written, best/ still step 2's
        link(source, directory)
    monkeypatch.setattr(training, "link_checkpoint", link_or_die)
    with pytest.raises(KeyboardInterrupt):
        trainer(tok, tmp_path, metric_for_best="loss", load_best_at_end=True).fit()
    resumed = trainer(tok, tmp_path, metric_for_best="loss", load_best_at_end=True)
    resumed.fit(resume_from=True)
    assert resumed.state.best_step == 4
    # Before: best/ kept step 2's model, and load_best_at_end loaded it as step 4's.
    last_model = {k: v for k, v in digest(tmp_path / "last").items() if k.startswith("model/")}
    assert {k: v for k, v in digest(tmp_path / "best").items() if k != "manifest.json"} == last_model
    assert verify(tmp_path / "best") is None
    final = bertcore.TaskModel.from_pretrained(tmp_path / "last" / "model")
    assert all(torch.equal(a, b) for a, b in zip(toy.weights(resumed.model).values(), toy.weights(final).values()))


def test_resume_from_a_named_checkpoint_resumes_from_that_one(tmp_path, tok, caplog):
    trainer(tok, tmp_path, max_steps=6, save_total_limit=3).fit()
    assert {p.name for p in tmp_path.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    caplog.set_level(logging.INFO, logger="bertcore")
    again = trainer(tok, tmp_path, max_steps=6, save_total_limit=3)
    again.fit(resume_from=tmp_path / "checkpoint-2")
    # Before: the newest checkpoint beside it was taken (last/, step 6) and nothing ran.
    assert f"resumed from {tmp_path / 'checkpoint-2'} at step 2" in caplog.text
    assert [r["step"] for r in again.history] == [2, 4, 6] and again.state.step == 6


def test_a_symlinked_last_folder_does_not_stop_the_run(tmp_path, tok, monkeypatch):
    """last/ moved to another disk and linked back: the run goes on (before: the second save
    after the resume failed with NotADirectoryError, and so did every later resume)."""
    out, elsewhere = tmp_path / "run", tmp_path / "other-disk" / "last"
    killed_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer(tok, out, max_steps=6).fit()
    monkeypatch.undo()
    elsewhere.parent.mkdir()
    shutil.move(out / "last", elsewhere)
    (out / "last").symlink_to(elsewhere)
    kept = digest(elsewhere)
    resumed = trainer(tok, out, max_steps=6)
    resumed.fit(resume_from=True)
    assert resumed.state.step == 6 and verify(out / "last") is None
    assert digest(elsewhere) == kept                       # what the link pointed at is untouched
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".last")) == []


def test_overwrite_unlinks_a_symlinked_folder_and_keeps_its_target(tmp_path, tok):
    out, elsewhere = tmp_path / "run", tmp_path / "other-disk"
    trainer(tok, out).fit()
    shutil.move(out / "best", elsewhere)
    (out / "best").symlink_to(elsewhere)
    kept = digest(elsewhere)
    # Before: "OSError: Cannot call rmtree on a symbolic link", with last/ already removed.
    trainer(tok, out, overwrite_output_dir=True).fit()
    assert not (out / "best").is_symlink() and verify(out / "best") is None
    assert digest(elsewhere) == kept


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_leaves_a_users_copy_named_checkpoint_something(tmp_path, tok, monkeypatch, keep):
    killed_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer(tok, tmp_path, save_total_limit=keep).fit()
    monkeypatch.undo()
    shutil.copytree(tmp_path / "last", tmp_path / "checkpoint-before-lr-change")   # the user's safe copy
    trainer(tok, tmp_path, save_total_limit=keep).fit(resume_from=True)
    # Before: pruning removed every checkpoint-* folder past the newest, the user's too.
    assert verify(tmp_path / "checkpoint-before-lr-change") is None


def test_kept_checkpoints_on_a_filesystem_without_hard_links(tmp_path, tok, monkeypatch):
    def no_links(*a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    # Before: shutil.Error from copytree at the second checkpoint; best/ already copied instead.
    done = trainer(tok, tmp_path, save_total_limit=2)
    done.fit()
    assert done.state.step == 4
    assert verify(tmp_path / "checkpoint-2") is None and verify(tmp_path / "best") is None


def test_a_trainer_state_of_another_layout_is_one_line_naming_file_and_key(tmp_path, tok, monkeypatch):
    """A trainer_state.pt that loads as plain data but not in the layout this version saves
    (another version's, or edited along with its manifest) is a CheckpointError naming the
    file and key, not an AttributeError/KeyError/TypeError from deep in resume."""
    killed_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer(tok, tmp_path).fit()
    monkeypatch.undo()
    state_file = tmp_path / "last" / "trainer_state.pt"
    original = torch.load(state_file, weights_only=True)
    other = toy.model(tok, heads=("a", "b"))
    other_optimizer = training.make_optimizer(other, toy.args(tmp_path, layerwise_lr_decay=0.5))
    cases = [([1, 2], "holds a list, not a dict"),
             ({k: v for k, v in original.items() if k != "rng"}, "key 'rng' is missing"),
             ({**original, "state": {**original["state"], "step": "2"}}, "state key 'step' is '2'"),
             ({**original, "run": ["x"]}, "key 'run' is list"),
             ({**original, "optimizer": other_optimizer.state_dict()}, "its 'optimizer' does not fit this run"),
             ({**original, "rng": {**original["rng"], "python": {"version": 3}}}, "its 'rng' does not fit")]
    manifest = tmp_path / "last" / "manifest.json"
    listed = json.loads(manifest.read_text())
    for payload, message in cases:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        state_file.write_bytes(buffer.getvalue())
        listed["files"]["trainer_state.pt"] = {"size": len(buffer.getvalue()),
                                               "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
        manifest.write_text(json.dumps(listed))
        with pytest.raises(CheckpointError) as caught:
            trainer(tok, tmp_path).fit(resume_from=True)
        line = str(caught.value)
        assert line.startswith(f"{state_file}: ") and message in line and "\n" not in line, line


def test_a_disk_that_fills_mid_log_line_is_the_error_reported(tmp_path, tok, monkeypatch):
    """The append that fills the disk leaves half a line in metrics.jsonl; drawing the curves
    at the end must neither fail on it nor replace the disk-full error (before: a
    JSONDecodeError from the plot, the disk-full error only its context)."""
    appends = {"n": 0}

    class FullDisk(io.StringIO):
        def __init__(self, file):
            super().__init__()
            self.file = file

        def __exit__(self, *exc):
            appends["n"] += 1
            with open(self.file, "a", encoding="utf-8") as f:
                if appends["n"] < 3:
                    f.write(self.getvalue())
                    return
                f.write(self.getvalue()[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(reporting, "open", lambda file, mode, **kw: FullDisk(file), raising=False)
    with pytest.raises(OSError, match=r"cannot append to .*metrics.jsonl: No space left on device \(the disk is "
                                      r"full; free space and run again\)"):   # before: a bare [Errno 28]
        trainer(tok, tmp_path, logging_steps=1).fit()
    monkeypatch.undo()
    assert (tmp_path / "curves.png").is_file()          # drawn from the two whole lines


def test_a_file_where_a_swapped_folder_goes_is_kept_and_named(tmp_path):
    """Before: the file was moved aside to .best.old without a word, and the next swap
    failed with NotADirectoryError."""
    (tmp_path / "best").write_text("the user's notes\n")
    with pytest.raises(FileExistsError, match=rf"{tmp_path / 'best'} is a file, in the way"):
        with folder_swap(tmp_path / "best") as new:
            (new / "x").write_text("x")
    assert (tmp_path / "best").read_text() == "the user's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_resume_with_another_metric_for_best_is_refused(tmp_path, tok, monkeypatch):
    """The saved best score is of the metric the run chose: resumed with another, it would
    compare a loss against an accuracy (before: resumed, best/ judged by the wrong score)."""
    monkeypatch.setattr(Trainer, "evaluate", lambda self, eval=None: {"accuracy": 0.5, "loss": 1.0})
    killed_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer(tok, tmp_path, metric_for_best="accuracy").fit()
    with pytest.raises(ValueError, match=r"metric_for_best: 'accuracy' then, 'loss' now"):
        trainer(tok, tmp_path, metric_for_best="loss").fit(resume_from=True)


def test_an_eval_set_with_nothing_to_score_is_no_diverged_loss(tmp_path, tok):
    """An MLM eval set where no token is masked (its masks are fixed per text: "great"
    draws none at 30 %) has no loss to report. Before: the NaN of 0 / 0 stopped the run as
    a diverged eval loss, "Lower learning_rate"."""
    encoder = bertcore.BertEncoder(bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32,
                                                       max_position_embeddings=64))
    model = bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", encoder.config, mlm_probability=0.3)},
                               tokenizer=tok)
    texts = [{"text": e["text"]} for e in toy.examples(16)]
    run = Trainer(model, tokenizer=tok, train=texts, eval=[{"text": "great"}],
                  args=toy.args(tmp_path, max_steps=2, eval_every=1))
    history = run.fit()
    assert len(history) == 2 and all("loss" not in record and "accuracy" in record for record in history)


def test_fewer_training_features_than_processes_is_one_line():
    """Before: the last ranks got empty batches (a collate error on them, the others waiting)."""
    from bertcore.dataplan import epoch_plan
    with pytest.raises(ValueError, match="3 training features for 4 processes; each process needs one at least"):
        epoch_plan([3], seed=0, epoch=0, batch_size=8, world=4, rank=3)
    assert all(epoch_plan([4], seed=0, epoch=0, batch_size=8, world=4, rank=r)[0][1] for r in range(4))
