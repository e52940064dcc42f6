"""Fault suite, a new user's journey through the README's commands: each message the CLI
prints names what is true (a checkpoint that exists, files that were written) and the fix
in the CLI's own terms (--head, --input, --resume), in one line."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import bertcore
from bertcore import reporting
from bertcore.bench import lib
from bertcore.cli import main
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


def finetune(checkpoint, train_file, output, *extra):
    return ["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(train_file),
            "--output", str(output), "--no-progress", "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def models(tmp_path_factory, checkpoint):
    """A saved model of one classification head, and one of two heads."""
    folder = tmp_path_factory.mktemp("models")
    cfg = bertcore.BertConfig.from_pretrained(checkpoint)
    tok = bertcore.Tokenizer.from_pretrained(checkpoint)
    encoder = bertcore.BertEncoder.from_pretrained(checkpoint)
    single = bertcore.create_head("classification", cfg, labels=["neg", "pos"])
    bertcore.TaskModel(encoder, {"s": single}, tokenizer=tok).save_pretrained(folder / "single")
    bertcore.TaskModel(encoder, {"s": single, "q": bertcore.create_head("qa", cfg)},
                       tokenizer=tok).save_pretrained(folder / "multi")
    return folder


def test_interrupt_before_the_first_checkpoint_does_not_point_at_one(tmp_path, checkpoint, train_file, capsys,
                                                                    monkeypatch):
    def stop(*args, **kwargs):     # Ctrl-C at step ~30, before anything was saved
        raise KeyboardInterrupt
    monkeypatch.setattr(bertcore.training.Trainer, "_loop", stop)
    out = tmp_path / "run"
    assert main(finetune(checkpoint, train_file, out, "--max-steps", "2")) == 130
    err = capsys.readouterr().err
    assert not (out / "last").exists()
    assert "--resume to continue" not in err, err          # was: "the last checkpoint is in run/last"
    assert f"no checkpoint was written to {out}/last yet" in err and "without --resume" in err, err


def test_bench_names_only_the_files_it_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # not installed
    rows = [{"mode": "fwd", "n": n, "ms": 1.0 + n, "impl": "torch", "device": "cpu"} for n in (1, 2)]
    lib.write_sweep(rows, tmp_path, "sweep", lambda r: "all", "t {mode}", x="n", y="ms", series="impl")
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv"]
    assert "and PNGs" not in out and "sweep.csv" in out and "matplotlib is not installed" in out, out  # was claimed


def test_debug_after_the_command(tmp_path):
    # was: "unrecognized arguments: --debug"; now the traceback, as `bertcore --debug predict`
    with pytest.raises(FileNotFoundError):
        main(["predict", "--model", str(tmp_path / "nope"), "good film", "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "predict", "--model", str(tmp_path / "nope"), "good film"])
    assert main(["predict", "--model", str(tmp_path / "nope"), "good film"]) == 2


def test_predict_output_in_a_missing_folder_is_refused(tmp_path, models, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", str(models / "single"), "good film", "--output", str(tmp_path / "no" / "p.jsonl")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"folder {tmp_path / 'no'} does not exist" in err, err
    assert not (tmp_path / "no").exists()                              # was: made without a word
    assert main(["predict", "--model", str(models / "single"), "good film", "--output", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["input"] == "good film"


def test_labels_are_not_announced_from_data_without_labels(tmp_path, checkpoint, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"text": "good film", "text_pair": "a plot"}\n' * 4, encoding="utf-8")
    assert main(finetune(checkpoint, pairs, tmp_path / "run", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl:1: missing label" in one_line_error(err, "finetune")
    assert "labels=" not in err, err                                   # was: labels=['None']


def _fake_pip(monkeypatch):
    """pip that fails as pip does: several lines on its stderr, exit 1."""
    def run(cmd, **kwargs):
        err = ("WARNING: Location 'file:///x' is ignored\nERROR: Could not find a version that satisfies "
               "the requirement x\nERROR: No matching distribution found for x\n")
        if kwargs.get("stderr") is None:    # not held back: pip writes to the terminal
            os.write(2, err.encode())
        return subprocess.CompletedProcess(cmd, 1, stderr=err if kwargs.get("stderr") is not None else None)
    monkeypatch.setattr(bertcore.cli.plugins.subprocess, "run", run)


@pytest.mark.parametrize("name, fix", [
    ("classificaton", "did you mean classification? (bertcore install classification)"),
    ("zzqx", "check the name"),
])
def test_failed_install_is_one_line_exit_2(monkeypatch, capfd, name, fix):
    _fake_pip(monkeypatch)
    assert main(["install", name]) == 2                                # was: pip's exit 1
    err = capfd.readouterr().err
    line = one_line_error(err, "install")
    assert f"{name} (bertcore-{name})" in line and "No matching distribution found for x" in line and fix in line
    assert not [x for x in err.splitlines() if x.startswith(("ERROR:", "WARNING:"))], err   # pip's lines held back


def test_misspelt_head_leads_with_did_you_mean(tmp_path, checkpoint, train_file, capsys):
    assert main(["finetune", "--head", "clasification", "--encoder", str(checkpoint), "--train", str(train_file),
                 "--output", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "did you mean classification?" in line and "install clasification" not in line, line


@pytest.mark.slow
def test_sigterm_says_how_to_resume_and_exits_143(tmp_path, checkpoint, train_file):
    out = tmp_path / "run"
    argv = finetune(checkpoint, train_file, out, "--epochs", "6", "--eval-every", "2", "--lr", "1e-3")
    child = subprocess.Popen([sys.executable, "-m", "bertcore", *argv], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "last" / "manifest.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr                            # was: -15, killed without a word
    assert "Traceback" not in stderr
    step = bertcore.runfolder.checkpoint_step(bertcore.runfolder.find_checkpoint(out / "last"))
    assert f"terminated (SIGTERM); the last checkpoint is in {out}/last (step {step}): run the same command with " \
           "--resume" in stderr


def test_resume_without_a_checkpoint_says_to_drop_it(tmp_path, checkpoint, train_file, capsys):
    assert main(finetune(checkpoint, train_file, tmp_path / "fresh", "--resume")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "drop --resume" in line, line                              # was: "fresh/last does not exist"


def test_predict_on_several_heads_says_the_option(models, capsys):
    assert main(["predict", "--model", str(models / "multi"), "good film"]) == 2
    line = one_line_error(capsys.readouterr().err, "predict")
    assert "--head NAME" in line and "head=" not in line, line         # was: "pass head=NAME"


def test_no_matplotlib_is_said_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    if hasattr(reporting, "_say_no_matplotlib"):
        reporting._say_no_matplotlib.cache_clear()                    # said by an earlier test in this process
    with caplog.at_level(logging.INFO, logger="bertcore"):
        for run in range(3):
            reporting.Reporter(tmp_path / str(run), True, False, None).close()
    said = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]             # was: once per run


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_file_name_as_text_is_refused(tmp_path, checkpoint, train_file, models, capsys, monkeypatch, command):
    monkeypatch.chdir(train_file.parent)
    source = ["--model", str(models / "single")] if command == "predict" else ["--encoder", str(checkpoint)]
    assert main([command, *source, "train.jsonl"]) == 2                # was: a prediction for "train.jsonl"
    line = one_line_error(capsys.readouterr().err, command)
    assert "use --input train.jsonl" in line, line
    assert main([command, *source, "good film"]) == 0


def test_an_encoder_inside_a_saved_model_finds_the_tokenizer_beside_it(tmp_path, models, train_file, capsys):
    """pretrain saves model/encoder and model/tokenizer; --encoder model/encoder without
    --tokenizer said the folder "holds neither tokenizer.json nor vocab.txt"."""
    encoder = models / "single" / "encoder"
    assert not (encoder / "vocab.txt").exists() and (encoder.parent / "tokenizer" / "vocab.txt").is_file()
    assert main(finetune(encoder, train_file, tmp_path / "run", "--max-steps", "2")) == 0
    assert main(["embed", "--encoder", str(encoder), "good film"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["embedding"]


# ---- found by reviewing the fixes above --------------------------------------------------

@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_long_text_is_no_file_name_to_check(checkpoint, models, capsys, command):
    source = ["--model", str(models / "single")] if command == "predict" else ["--encoder", str(checkpoint)]
    assert main([command, *source, "good film " * 40]) == 0             # was: [Errno 36] File name too long
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_an_encoder_beside_another_models_tokenizer_is_not_given_it(tmp_path, models, train_file, capsys):
    """A tokenizer/ beside the encoder folder with another vocabulary is not taken silently."""
    shutil.copytree(models / "single" / "encoder", tmp_path / "mine")
    bertcore.Tokenizer.train(["other words here"] * 5, vocab_size=60).save_pretrained(tmp_path / "tokenizer")
    assert main(finetune(tmp_path / "mine", train_file, tmp_path / "run", "--max-steps", "2")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "holds no tokenizer" in line and "another model's?" in line and "--tokenizer" in line, line


def test_an_error_in_encoding_names_the_file_and_line(tmp_path, checkpoint, capsys):
    """TaskModel.encode's "example N: ..." (here a QA answer of a character no token holds)
    named neither the file nor the line, as the head's checks do."""
    rows = [{"question": "who ?", "context": "john went home", "answers": {"text": ["john"], "answer_start": [0]}}] * 3
    rows.append({"question": "who ?", "context": "john \u200b", "answers": {"text": ["\u200b"], "answer_start": [5]}})
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["finetune", "--head", "qa", "--encoder", str(checkpoint), "--train", str(data), "--output",
                 str(tmp_path / "run"), "--no-progress", "--max-steps", "1"]) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert f"{data}:4: answer text '\\u200b' makes no token" in line, line


def test_predict_names_the_line_of_an_example_error(tmp_path, models, capsys, monkeypatch):
    def predict(self, inputs, head=None, batch_size=32, max_length=None):
        raise ValueError("example 2: the question leaves no room")     # TaskModel.encode's form
    monkeypatch.setattr(bertcore.TaskModel, "predict", predict)
    data = tmp_path / "in.txt"
    data.write_text("good film\nbad film\n", encoding="utf-8")
    assert main(["predict", "--model", str(models / "single"), "--input", str(data)]) == 2
    assert f"{data}:2: example 2: the question" in one_line_error(capsys.readouterr().err, "predict")


def test_output_dash_is_stdout_and_a_tilde_is_home(tmp_path, models, capsys, monkeypatch):
    assert main(["predict", "--model", str(models / "single"), "--output", "-", "good film"]) == 0
    assert json.loads(capsys.readouterr().out)["input"] == "good film"          # was: a file named "-"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["predict", "--model", str(models / "single"), "--output=~/p.jsonl", "good film"]) == 0
    assert (tmp_path / "p.jsonl").is_file()                                     # was: "folder ~ does not exist"


def test_install_of_a_folder_pip_cannot_build_says_so(tmp_path, monkeypatch, capsys):
    head = tmp_path / "badhead"
    head.mkdir()
    (head / "pyproject.toml").write_text("[build-system]\nrequires = []\nbuild-backend = 'nowhere'\n")

    def run(cmd, **kwargs):       # pip's build failure: indented lines, no ERROR: line
        return subprocess.CompletedProcess(cmd, 1, stderr="  × Preparing metadata did not run successfully.\n"
                                                          "  ╰─> ModuleNotFoundError: No module named 'nowhere'\n")
    monkeypatch.setattr(bertcore.cli.plugins.subprocess, "run", run)
    assert main(["install", str(head)]) == 2
    line = one_line_error(capsys.readouterr().err, "install")
    assert "No module named 'nowhere'" in line and f"pip could not build {head}" in line, line
    assert "check the name" not in line, line
