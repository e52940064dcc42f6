"""Fault suite, DDP under torchrun (2 gloo ranks on the CPU): a rank killed mid-run and the
run resumed ends bit for bit where an uninterrupted one does, each rank drawing its own
dropout again; resuming with another number of processes, or ranks naming different output
folders, is one line; a rank failing on its input takes every rank down with its error (no
hang); accumulation and an eval set that does not divide by the ranks match one process,
logged train loss included. Every launch has a timeout: a hang fails, it never blocks CI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore.checkpoint import file_sha256
from bertcore.training import Trainer

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS / "core"))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = r'''
import json, os, signal, sys, torch
sys.path.insert(0, {core!r})
import toy
from bertcore import Tokenizer, TaskModel, create_head
from bertcore.training import Trainer, TrainingArgs
cfg = json.loads(sys.argv[1])
rank = int(os.environ.get("RANK", 0))
tok = Tokenizer.from_pretrained(cfg["tok"])  # Tokenizer.train is not deterministic across processes
if cfg.get("corpus"):   # pretrain, rank 0 slow to save the final model/; can rank 1 load it once back?
    import time, bertcore
    from pathlib import Path
    from bertcore.pretraining import pretrain
    save = TaskModel.save_pretrained
    def slow_save(self, directory, *a, **kw):
        time.sleep(2 if rank == 0 and Path(directory) == Path(cfg["out"]) / "model" else 0)
        return save(self, directory, *a, **kw)
    TaskModel.save_pretrained = slow_save
    enc = bertcore.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64)
    pretrain(cfg["corpus"], tok, enc, TrainingArgs(cfg["out"], max_steps=2, batch_size=4, max_length=32,
                                                     progress=False))
    TaskModel.from_pretrained(Path(cfg["out"]) / "model")
    sys.exit(0)
model = toy.model(tok, dropout=cfg["dropout"]).double()  # float64: Adam magnifies float32 rounding
if cfg.get("kill_at") and rank == 1:   # SIGKILL this rank inside its kill_at-th training forward
    real, calls = model.compute_loss, [0]
    def compute_loss(*a, **kw):
        calls[0] += model.training
        if calls[0] == cfg["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    model.compute_loss = compute_loss
def data(n, seed=0):
    examples = toy.examples(n, seed=seed)
    if not cfg.get("ner"):
        return examples
    # 3 to 7 words: the ranks score different numbers of tokens, so a rank's token mean must
    # weigh by its share of the step's tokens (DDP alone averages the ranks' means alike)
    return [{{"tokens": x["text"].split(), "tags": ["B-PER", "I-PER"] + ["O"] * (len(x["text"].split()) - 2)}}
            for x in examples]
if cfg.get("ner"):   # a head that reads no pooler_output: the pooler gets no gradient
    head = create_head("ner", model.encoder.config, labels=["O", "B-PER", "I-PER"]).double()
    model = TaskModel(model.encoder, {{"ner": head}}, tokenizer=tok)
train = data(cfg["n"])
if rank == 1 and cfg.get("bad_rank1"):   # this rank's data fails where the other's does not
    train = train[:-1] + [{{"text": "good movie", "label": "neutral"}}]
out = cfg["out"] + ("-rank1" if rank == 1 and cfg.get("own_output") else "")
args = TrainingArgs(**{{"output_dir": out, "epochs": 2, "progress": False, "learning_rate": 3e-3,
                       "logging_steps": 1, **cfg["args"]}})
history = Trainer(model, tokenizer=tok, train=train, eval=data(7, seed=1), args=args).fit(
    resume_from=cfg.get("resume"))
if rank == 0:
    torch.save(model.state_dict(), out + "/final.pt")
    (__import__("pathlib").Path(out) / "history.json").write_text(json.dumps(history))
if torch.distributed.is_initialized():
    # the ranks leave together: one that tore gloo down while the other still wrote its files
    # aborted now and then at exit ("terminate called without an active exception", SIGABRT)
    torch.distributed.barrier()
'''


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """launch(world, out, **cfg): the worker in 1 process or under torchrun with 2 gloo ranks."""
    root = tmp_path_factory.mktemp("ddp")
    tokdir = str(toy.tokenizer().save_pretrained(root / "tok"))
    script = root / "worker.py"
    script.write_text(WORKER.format(core=str(TESTS / "core")))
    # gloo on the CPU: hide any GPU, else the workers would take nccl (one GPU per rank)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def run(world, out, timeout=90, **cfg):
        cfg = {"tok": tokdir, "out": str(out), "dropout": 0.1, "n": 40, **cfg}
        cfg["args"] = {"batch_size": 4, "eval_every": 3, **cfg.get("args", {})}
        cmd = [sys.executable, str(script), json.dumps(cfg)] if world == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
            json.dumps(cfg)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    run.tokdir = tokdir
    return run


def records(folder) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


@pytest.fixture(scope="module")
def killed_and_resumed(launch, tmp_path_factory):
    """An uninterrupted 2-rank run, and one whose rank 1 is SIGKILLed in step 6 (after the
    checkpoint of step 3), then resumed."""
    root = tmp_path_factory.mktemp("kill")
    whole, killed = root / "whole", root / "killed"
    done = launch(2, whole)
    assert done.returncode == 0, done.stderr[-3000:]
    first = launch(2, killed, kill_at=6)
    assert first.returncode != 0 and "SIGKILL" in first.stderr, first.stderr[-3000:]
    assert json.loads((killed / "last" / "manifest.json").read_text())["step"] == 3
    again = launch(2, killed, resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    return whole, killed


def test_a_rank_killed_mid_run_resumes_exactly_and_logs_each_step_once(killed_and_resumed):
    """Each rank draws its own dropout masks; a resumed rank 1 must get its own RNG states
    back, not rank 0's (which made the resumed run end elsewhere)."""
    whole, killed = killed_and_resumed
    expected, got = torch.load(whole / "final.pt"), torch.load(killed / "final.pt")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert records(killed) == records(whole)


def test_resuming_with_another_number_of_processes_is_one_line_naming_both(launch, killed_and_resumed):
    whole, _ = killed_and_resumed
    tok = bertcore.Tokenizer.from_pretrained(launch.tokdir)   # the runs' own: training one is not repeatable
    args = toy.args(whole, batch_size=4, eval_every=3, logging_steps=1)
    trainer = Trainer(toy.model(tok).double(), tokenizer=tok, train=toy.examples(40), eval=toy.examples(7, seed=1),
                      args=args)
    with pytest.raises(ValueError) as err:
        trainer.fit(resume_from=True)
    message = str(err.value)
    assert "\n" not in message and "data:" not in message
    assert "processes (world size): 2 then, 1 now" in message and "torchrun --nproc_per_node=2" in message


def test_a_rank_failing_on_its_input_takes_every_rank_down_with_its_error(launch, tmp_path):
    """Rank 1's data fails its check while rank 0 goes on into a collective: the error must
    reach the user and rank 0 must exit too, not wait for rank 1 for ever."""
    done = launch(2, tmp_path / "out", timeout=60, bad_rank1=True)
    assert done.returncode != 0
    assert "'neutral'" in done.stderr
    assert not (tmp_path / "out" / "last").exists()


def test_ranks_naming_different_output_folders_are_refused_in_one_line(launch, tmp_path):
    """Rank 0 writes the checkpoints every rank resumes from and loads best/ from: a rank
    with another folder would fail only after training, or resume a stale run."""
    done = launch(2, tmp_path / "out", own_output=True, args={"max_steps": 2, "load_best_at_end": True})
    assert done.returncode != 0
    line = f"the processes train into different output folders ({tmp_path / 'out'} on rank 0, " \
           f"{tmp_path / 'out-rank1'} on rank 1); give every rank the same output_dir (--output)"
    assert line in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out" / "last").exists()


def test_accumulation_and_an_odd_eval_set_match_one_process_train_loss_too(launch, tmp_path):
    """2 ranks × 4 × 2 micro-batches (no_sync on the first) = 1 process × 8 × 2: the same
    weights, the same eval metrics on 7 examples (none doubled or dropped), and the logged
    train loss is the global batch's, not rank 0's half."""
    runs = {}
    for world, bs in ((1, 8), (2, 4)):
        out = tmp_path / f"w{world}"
        done = launch(world, out, dropout=0.0, n=48, args={"batch_size": bs, "grad_accum_steps": 2, "eval_every": 2})
        assert done.returncode == 0, done.stderr[-3000:]
        runs[world] = torch.load(out / "final.pt"), json.loads((out / "history.json").read_text())
    for key, value in runs[2][0].items():
        torch.testing.assert_close(value, runs[1][0][key], rtol=1e-9, atol=1e-12, msg=key)
    one, two = runs[1][1], runs[2][1]
    assert [h["step"] for h in two] == [h["step"] for h in one] == [2, 4, 6]
    for a, b in zip(one, two):
        for key in ("accuracy", "loss", "train_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-9), (a["step"], key)


def test_a_head_that_leaves_the_pooler_unused_trains_under_ddp_as_in_one_process(launch, tmp_path):
    """NER (as QA, mean pooling) never reads pooler_output: DDP without unused-parameter
    detection stopped at step 2 ("Expected to have finished reduction in the prior iteration").
    Sentences of 3 to 7 words: each token weighs alike whichever rank scores it."""
    runs = {}
    for world, bs in ((1, 8), (2, 4)):
        out = tmp_path / f"w{world}"
        done = launch(world, out, dropout=0.0, n=32, ner=True, args={"batch_size": bs, "max_steps": 3})
        assert done.returncode == 0, done.stderr[-3000:]
        runs[world] = torch.load(out / "final.pt")
    for key, value in runs[2].items():
        # NER's loss is float32 even in a float64 model: per-rank token means round differently
        # (3e-9 here); averaging the ranks' means instead of their tokens is off by 7e-3
        torch.testing.assert_close(value, runs[1][key], rtol=1e-6, atol=1e-7, msg=key)


def test_no_rank_returns_from_pretrain_before_the_final_model_is_saved(launch, tmp_path):
    """Rank 0 alone saves model/; a rank that returned earlier and loaded it (a script that
    fine-tunes next) found no model/ and took the run down with it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(" ".join(toy.WORDS[(d * 7 + s * 3 + w) % len(toy.WORDS)] for w in range(5))
                                              for s in range(3)) for d in range(12)), encoding="utf-8")
    done = launch(2, tmp_path / "pt", corpus=str(corpus))
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_checkpoint_of_an_older_bertcore_without_rank_states_resumes_with_a_warning(launch, tmp_path):
    """An older bertcore kept rank 0's RNG states alone: such a run goes on (nothing is lost),
    with a warning that its dropout will not repeat draw for draw."""
    first = launch(2, tmp_path / "run", kill_at=6)
    assert first.returncode != 0 and "SIGKILL" in first.stderr, first.stderr[-3000:]
    state_file = tmp_path / "run" / "last" / "trainer_state.pt"
    payload = torch.load(state_file, weights_only=True)
    payload.pop("rank_rng")
    torch.save(payload, state_file)
    manifest = state_file.parent / "manifest.json"          # as that bertcore wrote it: the manifest agrees
    listed = json.loads(manifest.read_text())
    listed["files"][state_file.name] = {"size": state_file.stat().st_size, "sha256": file_sha256(state_file)}
    manifest.write_text(json.dumps(listed))
    again = launch(2, tmp_path / "run", resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds no RNG state for rank 1 (an older bertcore kept rank 0's alone)" in again.stderr


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), (None, "nccl"), ("cuda", "nccl")])
def test_the_process_group_backend_follows_the_training_device(monkeypatch, device, backend):
    """On a GPU machine, device="cpu" under torchrun took nccl, which reduces no CPU
    tensor: the run failed at its first all_reduce."""
    from bertcore import training
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(training.dist, "init_process_group", lambda name, *a, **kw: chosen.append(name))
    monkeypatch.setattr(training.atexit, "register", lambda fn: None)
    assert training.init_distributed(device) is False      # nothing joined: the group was faked
    assert chosen == [backend]


def test_the_ranks_leave_together(tmp_path):
    """A rank that finished first tore gloo down at exit while another still wrote its files,
    and aborted now and then (SIGABRT, "terminate called without an active exception": a
    finished run's launch failed). Exit now waits for every rank: rank 1's own last exit
    handler, which runs after bertcore's, finds the file rank 0 wrote late after a finished fit
    (a rank that failed does not wait: test_a_rank_failing_on_its_input...)."""
    script = tmp_path / "leave.py"
    script.write_text(
        "import atexit, os, sys, time\n"
        "from pathlib import Path\n"
        f"out, rank = Path({str(tmp_path)!r}), int(os.environ['RANK'])\n"
        "def check():   # registered first, so it runs after bertcore's exit handler\n"
        "    if rank == 1:\n"
        "        (out / 'seen').write_text(str((out / 'late0').exists()))\n"
        "atexit.register(check)\n"
        f"sys.path.insert(0, {str(TESTS / 'core')!r})\n"
        "import toy\n"
        "from bertcore.training import Trainer, TrainingArgs\n"
        "tok = toy.tokenizer()\n"
        "args = TrainingArgs(str(out / 'run'), max_steps=1, batch_size=2, progress=False, save_checkpoints=False)\n"
        "Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(8), args=args).fit()\n"
        "if rank == 0:\n"
        "    time.sleep(3)\n"
        "    (out / 'late0').write_text('written')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "seen").read_text() == "True"      # was: False, rank 1 gone before rank 0 was done
