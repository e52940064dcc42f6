"""Fault suite, the run folder: a new run into a folder that holds an earlier one, an
input read from inside the folder a run replaces, an unknown best metric, and a
pretraining run resumed or continued. Each is refused up front with one line, or
does what the flag says, and nothing saved is lost or silently mixed in."""
import hashlib
import os
import json
import random
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore.cli import main
from bertcore.pretraining import pretrain
from bertcore.runfolder import RunLock, RunLockedError
from bertcore.training import Trainer, TrainingArgs
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "good great fine bad awful poor movie film plot actor the a".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    file = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    file.write_text("\n\n".join("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
                                          for _ in range(rng.randint(2, 5))) for _ in range(40)), encoding="utf-8")
    return file


def finetune(checkpoint, train_file, output, *extra):
    return ["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(train_file),
            "--eval", str(train_file), "--output", str(output), "--no-progress", "--batch-size", "8",
            "--max-steps", "4", "--eval-every", "2", *extra]


def pretrain_cli(corpus, output, *extra):
    """A new tiny encoder's run; `continue_cli` continues a checkpoint (which keeps its sizes)."""
    return continue_cli(corpus, output, "--vocab-size", "60", "--hidden-size", "32", "--layers", "1", "--heads", "2",
                        *extra)


def continue_cli(corpus, output, *extra):
    return ["pretrain", "--corpus", str(corpus), "--output", str(output), "--max-length", "32",
            "--batch-size", "8", "--no-progress", *extra]


def digest(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_into_a_used_folder_is_refused_or_overwritten(tmp_path, checkpoint, train_file, capsys):
    out = tmp_path / "run"
    assert main(finetune(checkpoint, train_file, out, "--seed", "1")) == 0
    capsys.readouterr()
    before = {name: digest(out / name) for name in ("last", "best", "model")}
    # Before: the second run trained, then loaded the first run's best/ as its own at the end.
    assert main(finetune(checkpoint, train_file, out, "--seed", "2")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert f"{out} already holds a run (model/, last/, best/)" in line and "--resume" in line and "--overwrite" in line
    assert {name: digest(out / name) for name in before} == before        # nothing of it was touched

    assert main(finetune(checkpoint, train_file, out, "--seed", "2", "--overwrite")) == 0
    fresh = tmp_path / "fresh"                                          # the same run in an empty folder
    assert main(finetune(checkpoint, train_file, fresh, "--seed", "2")) == 0
    assert digest(out / "model") == digest(fresh / "model") != before["model"]


def classifier(checkpoint, seed=0):
    tok = bertcore.Tokenizer.from_pretrained(checkpoint)
    torch.manual_seed(seed)
    head = bertcore.create_head("classification", bertcore.BertConfig.from_pretrained(checkpoint), labels=["neg", "pos"])
    return bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint), {"c": head}, tokenizer=tok), tok


def test_a_stale_best_is_never_loaded_as_this_runs(tmp_path, checkpoint, train_file):
    """A run that keeps no checkpoints writes nothing an earlier run holds, so it is not
    refused; it must not take the earlier run's best/ for its own at the end (and it cannot
    ask to: load_best_at_end needs the run's own checkpoints)."""
    with pytest.raises(ValueError, match="load_best_at_end=True needs save_checkpoints=True"):
        TrainingArgs(str(tmp_path / "x"), load_best_at_end=True, save_checkpoints=False)

    def trained(out, seed, save_checkpoints=True):
        model, tok = classifier(checkpoint, seed)
        args = TrainingArgs(str(out), max_steps=4, eval_every=2, batch_size=8, seed=seed, progress=False,
                            load_best_at_end=save_checkpoints, learning_rate=1e-2, save_checkpoints=save_checkpoints)
        Trainer(model, tokenizer=tok, train=str(train_file), eval=str(train_file), args=args).fit()
        return model.state_dict()

    used = tmp_path / "used"
    earlier = trained(used, 1)                                    # leaves best/ (and last/)
    later = trained(used, 2, save_checkpoints=False)
    alone = trained(tmp_path / "empty", 2, save_checkpoints=False)
    # Before: `best/` existed, so the later run ended with the earlier run's weights.
    assert all(torch.equal(later[k], alone[k]) for k in later)
    assert not all(torch.equal(later[k], earlier[k]) for k in later)
    assert (used / "best").is_dir() and (used / "last").is_dir()   # and kept them


def test_fit_twice_on_one_trainer_replaces_its_own_checkpoints(tmp_path, checkpoint, train_file):
    model, tok = classifier(checkpoint)
    args = TrainingArgs(str(tmp_path / "run"), max_steps=2, eval_every=2, batch_size=8, progress=False)
    trainer = Trainer(model, tokenizer=tok, train=str(train_file), eval=str(train_file), args=args)
    first = trainer.fit()
    assert trainer.fit() and first                  # its own earlier fit(), not another run's: no refusal
    with pytest.raises(FileExistsError, match="already holds a run"):      # another Trainer's: refused
        Trainer(model, tokenizer=tok, train=str(train_file), eval=str(train_file), args=args).fit()


def test_overwrite_never_removes_what_bertcore_did_not_make(tmp_path, checkpoint, train_file, capsys):
    out = tmp_path / "project"
    (out / "model").mkdir(parents=True)
    (out / "model" / "__init__.py").write_text("# the user's own code\n")
    (out / "checkpoint-notes.txt").write_text("notes\n")
    # Before: --overwrite removed model/ (the user's package) and crashed on the notes file.
    assert main(finetune(checkpoint, train_file, out, "--overwrite")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert f"{out / 'model'} is in the way" in line and "bertcore did not make this one" in line
    assert (out / "model" / "__init__.py").read_text() == "# the user's own code\n"
    assert (out / "checkpoint-notes.txt").is_file()


def test_an_input_inside_the_folder_a_run_replaces_is_refused(tmp_path, corpus, train_file, capsys):
    pre = tmp_path / "pre"
    assert main(pretrain_cli(corpus, pre, "--max-steps", "2")) == 0
    capsys.readouterr()
    saved = digest(pre / "model")
    # Before: finetune --output pre replaced pre/model, the pretrained encoder it was reading.
    for extra in ([], ["--overwrite"]):
        assert main(finetune(pre / "model" / "encoder", train_file, pre, "--tokenizer", str(pre / "tokenizer"),
                             *extra)) == 2
        line = one_line_error(capsys.readouterr().err, "finetune")
        assert f"--encoder {pre / 'model' / 'encoder'} lies inside {pre / 'model'}" in line
    assert digest(pre / "model") == saved
    # the same folder spelled through `..` or a symlinked --output: refused all the same
    (tmp_path / "link").symlink_to(pre)
    (tmp_path / "other").mkdir()     # inputs are read before the folder check: the path must lead somewhere
    for encoder, output in ((tmp_path / "other" / ".." / "pre" / "model" / "encoder", pre),
                            (pre / "model" / "encoder", tmp_path / "link")):
        assert main(finetune(encoder, train_file, output, "--tokenizer", str(pre / "tokenizer"), "--overwrite")) == 2
        assert "lies inside" in one_line_error(capsys.readouterr().err, "finetune")
    assert digest(pre / "model") == saved


def test_overwrite_removes_the_earlier_run_only_once_the_new_one_has_good_inputs(tmp_path, corpus, checkpoint,
                                                                                  train_file, capsys):
    """--overwrite removed the earlier run first, then found the new run's corpus or data bad
    (too few documents, a file inside the folder it had just removed) and stopped: both runs
    lost. Inputs are now read and checked before anything is removed."""
    pre = tmp_path / "pre"
    assert main(pretrain_cli(corpus, pre, "--max-steps", "2")) == 0
    capsys.readouterr()
    def runs():
        return {p.name: digest(p) for p in pre.iterdir() if p.is_dir()}
    saved = runs()
    short = tmp_path / "three.txt"
    short.write_text("a good film\n\nbad plot\n\nthe actor\n", encoding="utf-8")
    assert main(pretrain_cli(short, pre, "--max-steps", "2", "--overwrite")) == 2
    assert "the corpus has 3 documents" in one_line_error(capsys.readouterr().err, "pretrain")
    inside = pre / "model" / "corpus.txt"
    inside.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(pretrain_cli(inside, pre, "--max-steps", "2", "--overwrite")) == 2
    assert f"--corpus {inside} lies inside {pre / 'model'}" in one_line_error(capsys.readouterr().err, "pretrain")
    inside.unlink()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n', encoding="utf-8")
    assert main(finetune(checkpoint, bad, pre, "--overwrite")) == 2
    assert "missing label" in one_line_error(capsys.readouterr().err, "finetune")
    assert runs() == saved and {"model", "last"} <= set(saved)          # was: model/, last/ removed


def test_a_resume_with_another_encoder_shape_is_refused_naming_it(tmp_path, corpus, capsys):
    """pretrain --resume --heads 4 of a 2-head run went on with 4 heads over the same weights
    and saved that, without a word; another width failed on a weight's shape, naming no option."""
    out = tmp_path / "pt"
    assert main(pretrain_cli(corpus, out, "--max-steps", "2")) == 0
    capsys.readouterr()
    saved = digest(out / "model")
    for option, change in ((["--heads", "4"], "encoder num_attention_heads: 2 then, 4 now"),
                           (["--hidden-size", "64", "--heads", "2"], "encoder hidden_size: 32 then, 64 now")):
        argv = pretrain_cli(corpus, out, "--max-steps", "2", "--resume")
        i = argv.index(option[0])
        argv[i:i + 2] = option[:2]
        argv += option[2:]
        assert main(argv) == 2
        line = one_line_error(capsys.readouterr().err, "pretrain")
        assert "cannot resume" in line and change in line, line
    assert digest(out / "model") == saved                               # was: rewritten with 4 heads


def test_an_unknown_metric_for_best_is_refused_before_training(tmp_path, checkpoint, train_file, capsys):
    out = tmp_path / "run"
    assert main(finetune(checkpoint, train_file, out, "--metric-for-best", "acuracy")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "metric_for_best='acuracy' is not an eval metric" in line and "accuracy" in line.split("use one of")[1]
    assert not (out / "last").exists() and not (out / "metrics.jsonl").exists()   # refused before a step
    assert main(finetune(checkpoint, train_file, out, "--metric-for-best", "loss")) == 0


def test_pretrain_resume_continues_the_run_with_its_own_vocabulary(tmp_path, corpus, monkeypatch):
    """Killed after its first checkpoint, then resumed: the same weights and log as a run
    never stopped; the vocabulary comes from the checkpoint, not trained again."""
    def args(out):
        return TrainingArgs(str(out), max_steps=4, eval_every=2, batch_size=8, max_length=32, progress=False,
                            logging_steps=1)

    cfg = bertcore.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=64)
    out = tmp_path / "killed"
    save = Trainer._save

    def save_then_die(self, state, *a, **kw):
        save(self, state, *a, **kw)
        if state.step == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(str(corpus), None, cfg, args(out), vocab_size=60)
    monkeypatch.setattr(Trainer, "_save", save)
    # WordPiece training breaks ties differently on each call: the run never stopped gets
    # the killed run's vocabulary, and any retraining on resume is made to fail
    vocabulary = bertcore.Tokenizer.from_pretrained(out / "tokenizer")
    whole = pretrain(str(corpus), vocabulary, cfg, args(tmp_path / "whole"))
    monkeypatch.setattr(bertcore.Tokenizer, "train", classmethod(lambda *a, **kw: pytest.fail("retrained")))
    # cfg=None: the shape comes from the checkpoint too (was: BertConfig's defaults, refused)
    resumed = pretrain(str(corpus), None, None, args(out), resume=True, vocab_size=60)

    assert resumed.history == whole.history
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "split" not in json.loads(line)]
    assert steps == [1, 2, 3, 4]                # the log kept the first two steps and was continued


def test_pretrain_cli_resume_is_passed_on(tmp_path, corpus, capsys):
    out = tmp_path / "pt"
    assert main(pretrain_cli(corpus, out, "--max-steps", "2")) == 0
    capsys.readouterr()
    log = (out / "metrics.jsonl").read_text()
    # Before: --resume was dropped, and the run started again at step 0 with a new vocabulary.
    assert main(pretrain_cli(corpus, out, "--max-steps", "2", "--resume")) == 0
    assert f"resumed from {out / 'last'} at step 2" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == log
    # without the size options: the run's own shape (was refused: "hidden_size: 32 then, 256 now")
    assert main(continue_cli(corpus, out, "--max-steps", "2", "--resume")) == 0
    assert f"resumed from {out / 'last'} at step 2" in capsys.readouterr().err


def test_continued_pretraining_uses_the_checkpoints_tokenizer(tmp_path, checkpoint, corpus, capsys):
    out = tmp_path / "more"
    # Before: without --tokenizer a new vocabulary was trained for an encoder that has its own.
    assert main(continue_cli(corpus, out, "--encoder", str(checkpoint), "--max-steps", "2")) == 0
    saved = out / "model" / "tokenizer"
    assert (saved / "vocab.txt").read_text() == (checkpoint / "vocab.txt").read_text()

    # an encoder object loaded from a checkpoint: its folder's tokenizer too (before: a new vocabulary)
    more = pretrain(str(corpus), None, bertcore.BertEncoder.from_pretrained(checkpoint),
                    TrainingArgs(str(tmp_path / "object"), max_steps=2, batch_size=8, max_length=32, progress=False))
    assert more.tokenizer.vocab_size == bertcore.Tokenizer.from_pretrained(checkpoint).vocab_size
    assert (tmp_path / "object" / "model" / "tokenizer" / "vocab.txt").read_text() == \
        (checkpoint / "vocab.txt").read_text()

    bare = tmp_path / "bare"                       # an encoder folder without a tokenizer
    bertcore.BertEncoder.from_pretrained(checkpoint).save_pretrained(bare)
    capsys.readouterr()
    assert main(continue_cli(corpus, tmp_path / "other", "--encoder", str(bare), "--max-steps", "2")) == 2
    line = one_line_error(capsys.readouterr().err, "pretrain")
    assert f"{bare} holds no tokenizer" in line and "--tokenizer" in line


def test_pretrain_writes_nothing_into_a_folder_another_run_holds(tmp_path, corpus):
    out = tmp_path / "busy"
    cfg = bertcore.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=64)
    with RunLock(out):
        with pytest.raises(RunLockedError):
            pretrain(str(corpus), None, cfg, TrainingArgs(str(out), max_steps=2, batch_size=8, max_length=32,
                                                          progress=False), vocab_size=60)
    # Before: the trained vocabulary was written to busy/tokenizer before the lock was taken.
    assert not (out / "tokenizer").exists()


def test_resume_after_a_kill_logs_each_step_once(tmp_path, checkpoint, train_file, monkeypatch):
    """Killed two steps past its checkpoint, with half a line written: the resumed run's
    metrics.jsonl holds each step once, as a run never stopped does."""
    tok = bertcore.Tokenizer.from_pretrained(checkpoint)

    def trainer(out):
        torch.manual_seed(0)
        model = bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                                   {"c": bertcore.create_head("classification", bertcore.BertConfig.from_pretrained(
                                       checkpoint), labels=["neg", "pos"])}, tokenizer=tok)
        args = TrainingArgs(str(out), max_steps=6, eval_every=3, batch_size=8, progress=False, logging_steps=1)
        return Trainer(model, tokenizer=tok, train=str(train_file), eval=str(train_file), args=args)

    trainer(tmp_path / "whole").fit()
    out = tmp_path / "killed"
    step = bertcore.reporting.Reporter.step

    def step_then_die(self, record, log):
        step(self, record, log)
        if record["step"] == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr(bertcore.reporting.Reporter, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer(out).fit()
    monkeypatch.undo()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')                          # a kill -9 cut this write short
    trainer(out).fit(resume_from=True)

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Before: steps 4 and 5 were logged twice, around a torn line.
    assert records(out) == records(tmp_path / "whole")


def test_a_device_this_machine_lacks_is_one_line(tmp_path, checkpoint, train_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    # Before: an AssertionError from deep in torch ("Torch not compiled with CUDA enabled").
    assert main(finetune(checkpoint, train_file, tmp_path / "run", "--device", "cuda")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "device='cuda', but this machine has 0 CUDA devices; use cpu" in line


def test_a_busy_folder_and_a_path_under_a_file_are_plain_one_liners(tmp_path, checkpoint, train_file, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        assert main(finetune(checkpoint, train_file, out)) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    # Before: "RunLockedError: ... (--debug shows where)", as for a bug, and exit 1.
    assert line == f"bertcore finetune: error: {out} is in use by pid {os.getpid()}" + line.split(str(os.getpid()))[1]
    assert "RunLockedError" not in line and "--debug" not in line

    blocker = tmp_path / "a.jsonl"
    blocker.write_text("")
    # every file goes through this helper (predict --output a.jsonl/out.jsonl among them)
    with pytest.raises(OSError, match=rf"cannot write {blocker / 'out.jsonl'}: .*; nothing was replaced "
                                      rf"\({blocker} is a file, not a folder; fix the path\)"):
        bertcore.files.write_text(blocker / "out.jsonl", "x")    # before: "(is the disk full or ...?)"


def test_a_warning_is_one_line_too(tmp_path, checkpoint, capsys):
    one_class = tmp_path / "pos.jsonl"
    one_class.write_text("".join(json.dumps({"text": f"good {w}", "label": "pos"}) + "\n" for w in WORDS), "utf-8")
    assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(one_class),
                 "--labels", "pos,neg", "--output", str(tmp_path / "run"), "--no-progress", "--max-steps", "1"]) == 0
    err = capsys.readouterr().err
    # Before: Python's "<file>.py:81: UserWarning: ..." and the source line of the warn() call.
    assert "bertcore: warning: the training data has one class only ('pos')" in err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_pretrain_holds_its_folder_from_the_check_to_the_saved_model(tmp_path, corpus, monkeypatch):
    """Another process asking for the folder is refused at every step, not only during fit:
    before, the lock was free between the tokenizer's write and fit(), and while model/
    was written."""
    import subprocess
    import sys
    import bertcore.pretraining as pretraining

    out = tmp_path / "pt"
    refused = []

    def another_process_asks():
        probe = subprocess.run([sys.executable, "-c", "import sys; from bertcore.runfolder import RunLock, "
                                f"RunLockedError\ntry: RunLock({str(out)!r}).acquire()\n"
                                "except RunLockedError: sys.exit(3)"], capture_output=True)
        refused.append(probe.returncode == 3)

    train_tokenizer, save = pretraining._train_tokenizer, bertcore.TaskModel.save_pretrained

    def tokenizer_then_ask(*a, **kw):
        tok = train_tokenizer(*a, **kw)
        another_process_asks()
        return tok

    def ask_then_save(self, directory, *a, **kw):
        if Path(directory) == out / "model":
            another_process_asks()
        return save(self, directory, *a, **kw)
    monkeypatch.setattr(pretraining, "_train_tokenizer", tokenizer_then_ask)
    monkeypatch.setattr(bertcore.TaskModel, "save_pretrained", ask_then_save)
    cfg = bertcore.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=64)
    pretrain(str(corpus), None, cfg, TrainingArgs(str(out), max_steps=2, batch_size=8, max_length=32,
                                                  progress=False, save_checkpoints=False), vocab_size=60)
    assert refused == [True, True]


def test_a_frozen_encoder_from_the_hub_cache_is_pointed_at_by_its_snapshot_path(tmp_path, checkpoint, train_file,
                                                                               monkeypatch):
    """Hub snapshots are symlinks into blobs/; a heads-only checkpoint must point at the
    snapshot's file, beside its config.json (before: the blob, and loading failed)."""
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    blobs = tmp_path / "hub" / "models--org--tiny" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for file in checkpoint.iterdir():         # blobs are named by their hash, as the Hub cache does
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(blob)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tok, encoder = bertcore.Tokenizer.from_pretrained("org/tiny"), bertcore.BertEncoder.from_pretrained("org/tiny")
    model = bertcore.TaskModel(encoder, {"c": bertcore.create_head("classification", encoder.config,
                                                                   labels=["neg", "pos"])}, tokenizer=tok)
    out = tmp_path / "run"
    Trainer(model, tokenizer=tok, train=str(train_file), args=TrainingArgs(str(out), max_steps=1, batch_size=8,
                                                                             progress=False, freeze_encoder=True)).fit()
    assert not (out / "last" / "model" / "encoder").exists()              # heads only: it points
    loaded = bertcore.TaskModel.from_pretrained(out / "last" / "model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.encoder.state_dict().values(), encoder.state_dict().values()))


def test_a_joinable_lock_is_joined_by_its_own_thread_only(tmp_path, monkeypatch):
    import threading
    monkeypatch.chdir(tmp_path)
    out = Path("run")                                        # relative, as --output often is
    with RunLock(out, joinable=True):
        with RunLock(out):                                   # this thread (pretrain's Trainer): joins
            pass
        refused = []

        def another_thread():
            try:
                RunLock(out).acquire()
            except RunLockedError:
                refused.append(True)
        thread = threading.Thread(target=another_thread)
        thread.start()
        thread.join()
        assert refused == [True]                             # another thread's run: refused
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")            # the working folder changes meanwhile
    assert not RunLock._joinable                             # released: nothing left to join


def test_a_stray_rank_variable_does_not_skip_the_check(tmp_path, checkpoint, train_file, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(finetune(checkpoint, train_file, out)) == 0
    monkeypatch.setenv("RANK", "1")            # not under torchrun (no WORLD_SIZE): this process is the run
    capsys.readouterr()
    assert main(finetune(checkpoint, train_file, out)) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err, "finetune")


def test_a_tokenizer_with_more_ids_than_the_encoder_is_refused_before_training(tmp_path, checkpoint, train_file,
                                                                               capsys):
    bigger = tmp_path / "bigger"
    tokens = (checkpoint / "vocab.txt").read_text(encoding="utf-8").splitlines()
    bigger.mkdir()
    (bigger / "vocab.txt").write_text("\n".join(tokens + [f"extra{i}" for i in range(30)]) + "\n", "utf-8")
    # Before: it trained and saved; predict failed later, on the texts that hit an extra id.
    assert main(finetune(checkpoint, train_file, tmp_path / "run", "--tokenizer", str(bigger))) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert f"has {len(tokens) + 30} ids but the encoder has vocab_size={len(tokens)} embeddings" in line
    assert not (tmp_path / "run" / "last").exists()


@pytest.mark.parametrize("labels, message", [("neg,pos,neg", "'neg' is given twice"),
                                             ("neg,,pos", "label 2 of 3 is empty")])
def test_repeated_or_empty_labels_are_refused(tmp_path, checkpoint, train_file, capsys, labels, message):
    # Before: a 3-class head with a dead class, and an export with a broken id2label.
    assert main(finetune(checkpoint, train_file, tmp_path / "run", "--labels", labels)) == 2
    assert message in one_line_error(capsys.readouterr().err, "finetune")


def test_an_edited_head_json_is_named_not_the_encoder_config(tmp_path, checkpoint):
    model, _ = classifier(checkpoint)
    saved = model.save_pretrained(tmp_path / "model")
    head_json = saved / "heads" / "c" / "head.json"
    info = json.loads(head_json.read_text())
    info["config"]["labels"] = ["neg", "pos", "other"]
    info["config"]["num_labels"] = 3
    head_json.write_text(json.dumps(info))
    # Before: "... model expects (3, 32); does config.json match the weights?"
    with pytest.raises(ValueError, match=rf"expects \(3, 32\); does {head_json} match the weights\?"):
        bertcore.TaskModel.from_pretrained(saved)
    info["config"]["labels"], info["config"]["num_labels"], info["distribution"] = ["neg", "pos"], 2, 5
    head_json.write_text(json.dumps(info))
    # Before: "AttributeError: 'int' object has no attribute 'lower'", exit 1 in the CLI.
    with pytest.raises(ValueError, match=rf"{head_json}: distribution is 5; expected the name"):
        bertcore.TaskModel.from_pretrained(saved)


def test_a_reader_that_leaves_the_pipe_early_gets_no_error(tmp_path):
    import subprocess
    import sys
    # Before: "bertcore heads: error: [Errno 32] Broken pipe", exit 2.
    pipe = subprocess.Popen([sys.executable, "-m", "bertcore", "heads", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    pipe.stdout.close()                          # as `| head -c 0` does
    assert pipe.wait(timeout=120) == 1 and pipe.stderr.read() == b""


def test_a_model_folder_without_heads_says_so(tmp_path, checkpoint):
    model, _ = classifier(checkpoint)
    saved = model.save_pretrained(tmp_path / "model")
    info = json.loads((saved / "taskmodel.json").read_text())
    (saved / "taskmodel.json").write_text(json.dumps({**info, "heads": []}))
    # Before: "this model has heads []; pass head=NAME" at the first prediction.
    with pytest.raises(ValueError, match=rf"{saved / 'taskmodel.json'} lists no heads"):
        bertcore.TaskModel.from_pretrained(saved)
    (saved / "taskmodel.json").unlink()
    import shutil
    shutil.rmtree(saved / "heads")
    # Before: "[Errno 2] No such file or directory: '.../heads'"
    with pytest.raises(FileNotFoundError, match=rf"{saved} has neither taskmodel.json nor heads/"):
        bertcore.TaskModel.from_pretrained(saved)


def test_continued_pretraining_keeps_the_models_trained_heads(tmp_path, corpus, capsys):
    """`--encoder <run>/model/encoder`: the run's trained MLM and NSP heads continue (they
    were made anew, as if the run had pretrained the encoder alone)."""
    first = tmp_path / "first"
    assert main(pretrain_cli(corpus, first, "--max-steps", "4")) == 0
    again = tmp_path / "again"
    assert main(continue_cli(corpus, again, "--encoder", str(first / "model" / "encoder"), "--max-steps", "1",
                             "--lr", "1e-12", "--mlm-probability", "0.2")) == 0
    model = bertcore.TaskModel.from_pretrained(first / "model")
    more = bertcore.TaskModel.from_pretrained(again / "model")
    for name in ("mlm", "nsp"):
        before, after = model.heads[name].state_dict(), more.heads[name].state_dict()
        assert before.keys() == after.keys()
        assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before), name   # was: new heads
    assert more.heads["mlm"].mlm_probability == 0.2                   # this run's masking, not the saved one's


def test_pretrain_shape_and_length_errors_name_the_options(tmp_path, corpus, capsys):
    assert main(pretrain_cli(corpus, tmp_path / "a", "--heads", "3")) == 2
    line = one_line_error(capsys.readouterr().err, "pretrain")
    assert "--hidden-size 32 is not divisible by --heads 3" in line, line   # was: hidden_size=32 ... heads=3
    first = tmp_path / "first"
    assert main(pretrain_cli(corpus, first, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(continue_cli(corpus, tmp_path / "b", "--encoder", str(first / "model" / "encoder"),
                             "--max-length", "256")) == 2
    line = one_line_error(capsys.readouterr().err, "pretrain")
    assert "--max-length 256 exceeds the 128 positions of --encoder" in line, line   # was: args.max_length=256
    # sizes of a new encoder beside --encoder: refused by name (were ignored without a word)
    assert main(pretrain_cli(corpus, tmp_path / "c", "--encoder", str(first / "model" / "encoder"))) == 2
    line = one_line_error(capsys.readouterr().err, "pretrain")
    assert "error: --vocab-size, --hidden-size, --layers, --heads size a new encoder, but --encoder " in line, line
    assert "keeps its own shape and vocabulary; drop --vocab-size, --hidden-size, --layers, --heads" in line, line
    assert not (tmp_path / "c").exists()
