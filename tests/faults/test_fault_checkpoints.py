"""Fault suite, saving and resuming: the faults are real (a process killed with SIGKILL at
chosen points inside a save, a tampered file, a pickle payload, a second trainer on the
same folder, non-finite numbers), and each test asserts that nothing is lost and that
the message says what happened and what to do."""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore.checkpoint import CheckpointError, file_sha256
from bertcore.runfolder import RunLock, RunLockedError, load_state
from bertcore.training import NonFiniteLossError, Trainer

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS / "core"))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "toy_plugin")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = toy.tokenizer()
    tok.save_pretrained(tmp_path_factory.mktemp("tok"))  # saved once so subprocesses use the same ids
    return tok


args, weights = toy.args, toy.weights


# A child process that dies with SIGKILL at the k-th durable write (or at the rename that
# swaps a folder in), exactly as `kill -9` or a power cut would stop it there.
KILLER = r'''
import os, signal, sys
sys.path.insert(0, {core!r})
import torch
torch.set_num_threads(1)
import bertcore, bertcore.files as files, toy
writes, armed = {{"n": 0}}, {{"on": False}}
real_write, real_replace = files.atomic_write, os.replace
def atomic_write(path, write, mode=0o666):
    writes["n"] += 1
    if writes["n"] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, write, mode)
def replace(src, dst):
    if {between_renames} and armed["on"] and str(src).endswith({renamed!r}):
        os.kill(os.getpid(), signal.SIGKILL)   # the old folder is already moved aside
    return real_replace(src, dst)
files.atomic_write, os.replace = atomic_write, replace
tok = bertcore.Tokenizer.from_pretrained({tokdir!r})
{body}
'''


def run_killed(tmp_path, tok_dir, body, kill_at=0, between_renames=None):
    """Run `body` in a child that kills itself at its `kill_at`-th write, or (with
    `between_renames` a folder name) once that folder's new copy is about to be renamed in."""
    script = tmp_path / "child.py"
    script.write_text(KILLER.format(core=str(TESTS / "core"), tokdir=str(tok_dir), kill_at=kill_at,
                                    between_renames=bool(between_renames), renamed=f".{between_renames}.new",
                                    body=textwrap.dedent(body)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done


SAVE_OVER = '''
old, new = toy.model(tok, seed=0), toy.model(tok, seed=1)
target = {target!r}
if not os.path.exists(target):
    files.atomic_write, os.replace = real_write, real_replace
    old.save_pretrained(target)
    files.atomic_write, os.replace = atomic_write, replace
writes["n"], armed["on"] = 0, True
new.save_pretrained(target)
'''


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, between, which", [(1, None, "old"), (3, None, "old"), (6, None, "old"),
                                                     (0, "model", "new")])
def test_kill_inside_a_model_save_leaves_the_old_model_or_the_new_one(tmp_path, tok, kill_at, between, which):
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    target = tmp_path / "model"
    done = run_killed(tmp_path, tok_dir, SAVE_OVER.format(target=str(target)), kill_at, between)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    loaded = bertcore.TaskModel.from_pretrained(target)        # loads: never a mix, never nothing
    got = weights(loaded)
    matches = []
    for seed in (0, 1):
        reference = weights(toy.model(tok, seed=seed))
        matches.append(all(torch.equal(got[k], reference[k]) for k in reference))
    # killed while writing: the old model, whole; killed between the renames: the new one, complete
    assert matches == ([True, False] if which == "old" else [False, True])


def test_a_save_killed_between_its_renames_is_recovered_and_the_next_save_works(tmp_path, tok):
    """Between the two renames the new folder is complete and the old one is aside: loading
    puts the new one in place, and the next save starts clean."""
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    target = tmp_path / "model"
    done = run_killed(tmp_path, tok_dir, SAVE_OVER.format(target=str(target)), between_renames="model")
    assert done.returncode == -signal.SIGKILL
    assert not target.exists() and target.with_name(".model.new").is_dir()
    new = weights(toy.model(tok, seed=1))
    loaded = weights(bertcore.TaskModel.from_pretrained(target))
    assert all(torch.equal(loaded[k], new[k]) for k in new)
    toy.model(tok, seed=2).save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "model", "tok"]


TRAIN = '''
data, held = toy.examples(40), toy.examples(16, seed=1)
args = bertcore.TrainingArgs(output_dir={out!r}, epochs=2, eval_every=3, batch_size=6, learning_rate=3e-3,
                             progress=False, logging_steps=2)
model = toy.model(tok)
saves = {{"n": 0}}
import bertcore.training as training
real_save = training.save_checkpoint
def save_checkpoint(directory, model, state=None, **kw):
    saves["n"] += state is not None
    if saves["n"] == 2:        # the second resumable checkpoint: count writes from here
        writes["n"], armed["on"] = 0, True
        files.atomic_write = atomic_write
    return real_save(directory, model, state, **kw)
files.atomic_write = real_write
training.save_checkpoint = save_checkpoint
bertcore.Trainer(model, tokenizer=tok, train=data, eval=held, args=args).fit()
'''


@pytest.fixture(scope="module")
def uninterrupted(tok, tmp_path_factory):
    """The weights of the run the killed ones must end with."""
    torch.set_num_threads(1)
    full = toy.model(tok)
    Trainer(full, tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
            args=args(tmp_path_factory.mktemp("full"), eval_every=3, batch_size=6)).fit()
    return weights(full)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, between", [(2, None), (0, "model"), (0, "last")])
def test_kill_during_a_training_checkpoint_then_resume_is_exact(tmp_path, tok, uninterrupted, kill_at, between):
    """Killed inside the second checkpoint's write (a file, the inner model folder's rename,
    the outer last/ swap): resume picks the newest complete checkpoint and ends exactly
    where the uninterrupted run does."""
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    data, held = toy.examples(40), toy.examples(16, seed=1)
    out = tmp_path / "b"
    done = run_killed(tmp_path, tok_dir, TRAIN.format(out=str(out)), kill_at, between)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    resumed = toy.model(tok, seed=123)
    history = Trainer(resumed, tokenizer=tok, train=data, eval=held,
                      args=args(out, eval_every=3, batch_size=6)).fit(resume_from=True)
    assert history[-1]["step"] == 14 and history[0]["step"] == 3
    for key, value in weights(resumed).items():
        torch.testing.assert_close(value, uninterrupted[key], rtol=0, atol=0, msg=key)


def trained(tmp_path, tok, **kw):
    model = toy.model(tok)
    Trainer(model, tokenizer=tok, train=toy.examples(24), eval=toy.examples(8, seed=1),
            args=args(tmp_path, epochs=1, **kw)).fit()
    return model


def test_tampered_weights_are_refused_with_the_file_named(tmp_path, tok):
    trained(tmp_path, tok)
    weights_file = tmp_path / "last" / "model" / "encoder" / "model.safetensors"
    raw = bytearray(weights_file.read_bytes())
    raw[-5] ^= 0xFF
    weights_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"no complete checkpoint at .*last: .*model.safetensors does not "
                                              r"match manifest.json"):
        Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), args=args(tmp_path, epochs=1)).fit(True)


def test_a_pickle_in_the_trainer_state_is_never_run(tmp_path, tok):
    trained(tmp_path, tok)
    proof = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    state_file = tmp_path / "last" / "trainer_state.pt"
    torch.save({"state": Payload()}, state_file)
    manifest = json.loads((tmp_path / "last" / "manifest.json").read_text())   # a careful attacker
    import hashlib
    manifest["files"]["trainer_state.pt"] = {"size": state_file.stat().st_size,
                                            "sha256": hashlib.sha256(state_file.read_bytes()).hexdigest()}
    (tmp_path / "last" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"trainer_state.pt: cannot read it as tensors and plain data"):
        Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), args=args(tmp_path, epochs=1)).fit(True)
    assert not proof.exists()
    assert pickle.dumps  # the payload class was real: pickling it would run os.system


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path, tok):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"{tmp_path} is in use by pid {os.getpid()}"):
            trained(tmp_path, tok)
    trained(tmp_path, tok)       # released: the folder is free again


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(tmp_path, tok):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from bertcore.runfolder import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=rf"pid {child.pid}"):
        trained(tmp_path, tok)
    child.kill()
    child.wait()
    trained(tmp_path, tok)       # the kernel dropped the dead holder's lock


def test_resume_with_other_settings_is_refused_with_the_differences(tmp_path, tok):
    trained(tmp_path, tok)
    trainer = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), args=args(tmp_path, batch_size=4,
                                                                                       epochs=1))
    with pytest.raises(ValueError, match=r"cannot resume from .*last: .*batch_size: 8 then, 4 now\); resume with "
                                         r"the original settings"):
        trainer.fit(resume_from=True)
    other_data = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24, seed=9), args=args(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"data: "):
        other_data.fit(resume_from=True)
    # they change what every step does, and were taken silently (the run ended 0.05 off)
    for change, said in (({"loss_weights": {"toy": 5.0}}, r"loss_weights: \{\} then, \{'toy': 5.0\} now"),
                         ({"max_grad_norm": 0.01}, "max_grad_norm: 1.0 then, 0.01 now")):
        other = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), args=args(tmp_path, epochs=1, **change))
        with pytest.raises(ValueError, match=said):
            other.fit(resume_from=True)


def test_resume_with_a_head_added_names_it_in_a_few_words(tmp_path, tok):
    """The whole head configs, then and now, ran to a thousand characters."""
    trained(tmp_path, tok)
    model = toy.model(tok, heads=("toy", "extra"))
    trainer = Trainer(model, tokenizer=tok, train={"toy": toy.examples(24)}, args=args(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"\(head 'extra' added\); resume with the original") as err:
        trainer.fit(resume_from=True)
    assert len(str(err.value)) < 300, str(err.value)


def test_a_checkpoint_that_did_not_record_a_setting_resumes(tmp_path, tok):
    """Settings a newer bertcore records (loss_weights, max_grad_norm) are not held against
    a checkpoint of an older one, which did not."""
    trained(tmp_path, tok)
    state_file = tmp_path / "last" / "trainer_state.pt"
    payload = torch.load(state_file, weights_only=True)
    for key in ("loss_weights", "max_grad_norm"):
        del payload["run"]["args"][key]
    torch.save(payload, state_file)
    manifest = json.loads((tmp_path / "last" / "manifest.json").read_text())
    manifest["files"][state_file.name] = {"size": state_file.stat().st_size, "sha256": file_sha256(state_file)}
    (tmp_path / "last" / "manifest.json").write_text(json.dumps(manifest))
    Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), eval=toy.examples(8, seed=1),
            args=args(tmp_path, epochs=1)).fit(resume_from=True)


def test_a_nan_gradient_with_a_finite_loss_never_reaches_the_weights(tmp_path, tok):
    model = toy.model(tok)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] > 6 else grad

    model.heads["toy"].classifier.weight.register_hook(poison)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, eval_every=2), head="toy")
    with pytest.raises(NonFiniteLossError, match=r"gradient norm became nan at step 7 .* weights are unharmed; "
                                                 r"the last good checkpoint is .*last \(step 6\)"):
        trainer.fit()
    for value in weights(model).values():
        assert torch.isfinite(value).all()
    assert load_state(tmp_path / "last")["state"]["step"] == 6


def test_a_huge_learning_rate_never_saves_a_non_finite_checkpoint(tmp_path, tok):
    model = toy.model(tok)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, learning_rate=1e30, warmup_ratio=0.0, eval_every=1, max_grad_norm=0.0))
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    for folder in ("last", "best"):
        if (tmp_path / folder).exists():
            for record in load_state(tmp_path / "last")["state"]["history"]:
                assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k.endswith("loss"))
            saved = bertcore.TaskModel.from_pretrained(tmp_path / folder / "model")
            assert all(torch.isfinite(p).all() for p in saved.parameters())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tmp_path, tok, umask, mode):
    old = os.umask(umask)
    try:
        toy.model(tok).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


def test_checkpoints_resume_from_the_newest_complete_folder(tmp_path, tok):
    """A double crash can leave the only complete checkpoint beside last/: resume finds it."""
    trained(tmp_path, tok)
    last = tmp_path / "last"
    os.replace(last, tmp_path / ".last.new")
    (tmp_path / "last").mkdir()                       # an empty, unfinished last/
    trainer = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(24), args=args(tmp_path, epochs=1))
    history = trainer.fit(resume_from=True)
    assert history[-1]["step"] == 3 and trainer.state.step == 3
