"""Fault suite, the command line: a full disk, a read-only folder, Ctrl-C, damaged files
and bad options each end in one line on stderr, a non-zero exit and no traceback, and
nothing already saved is lost."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bertcore
from bertcore.cli import main
from cli_testing import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

def finetune(checkpoint, train_file, output, *extra):
    return ["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(train_file),
            "--output", str(output), "--no-progress", "--batch-size", "8", *extra]


def cli(*argv, timeout=300, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bertcore", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the filesystem, then give back `leave` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_during_training_is_one_line_and_keeps_what_was_saved(small_disk, checkpoint, train_file):
    fill(small_disk, leave=64 * 1024)     # room to start, not for a checkpoint
    done = cli(*finetune(checkpoint, train_file, small_disk / "run", "--epochs", "1"))
    assert done.returncode == 2
    line = one_line_error(done.stderr, "finetune")
    assert "cannot write" in line and "No space left on device" in line, line
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]   # no temp file left behind


def test_disk_full_while_saving_over_a_model_keeps_the_old_one(small_disk, checkpoint):
    model = bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                               {"s": bertcore.create_head("classification", bertcore.BertConfig.from_pretrained(
                                   checkpoint), labels=["neg", "pos"])})
    model.save_pretrained(small_disk / "model")
    filler = fill(small_disk)
    with pytest.raises(OSError, match=r"cannot write .*No space left on device"):
        model.save_pretrained(small_disk / "model")
    filler.unlink()
    assert bertcore.TaskModel.from_pretrained(small_disk / "model").heads["s"].labels == ["neg", "pos"]


def test_read_only_folder_is_one_line(small_disk, checkpoint, train_file):
    (small_disk / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    done = cli(*finetune(checkpoint, train_file, small_disk / "run", "--max-steps", "2"))
    assert done.returncode == 2
    assert "Read-only file system" in one_line_error(done.stderr, "finetune")


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_resume_finishes(tmp_path, checkpoint, train_file):
    out = tmp_path / "run"
    argv = finetune(checkpoint, train_file, out, "--epochs", "6", "--eval-every", "2", "--lr", "1e-3")
    # A shell's background job starts with SIGINT ignored, and so would the child: undo that.
    child = subprocess.Popen([sys.executable, "-m", "bertcore", *argv], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "last" / "manifest.json").is_file() and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    stopped_at = bertcore.runfolder.load_state(bertcore.runfolder.find_checkpoint(out / "last"))["state"]["step"]
    assert f"interrupted; the last checkpoint is in {out}/last (step {stopped_at}): run the same command with " \
           "--resume" in stderr
    assert 2 <= stopped_at < 36
    resumed = cli(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert bertcore.runfolder.load_state(out / "last")["state"]["step"] == 36


@pytest.mark.parametrize("damage, message", [
    ("tokenizer.json", "tokenizer.json: not a tokenizer the `tokenizers` library can read"),
    ("config.json", "config.json"),
])
def test_damaged_checkpoint_files_are_one_line(tmp_path, checkpoint, train_file, capsys, damage, message):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / damage).write_text('{"oops": ', encoding="utf-8")
    assert main(finetune(broken, train_file, tmp_path / "run", "--max-steps", "1")) == 2
    assert message.replace("\\", "") in one_line_error(capsys.readouterr().err, "finetune")


def test_damaged_head_json_and_bad_options_are_one_line(tmp_path, checkpoint, train_file, capsys):
    assert main(finetune(checkpoint, train_file, tmp_path / "run", "--max-steps", "2")) == 0
    capsys.readouterr()
    head_json = tmp_path / "run" / "model" / "heads" / "classification" / "head.json"
    head_json.write_text("[1, 2]", encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "good film"]) == 2
    assert "head.json: expected a JSON object, got a list" in one_line_error(capsys.readouterr().err, "predict")
    assert main(finetune(checkpoint, train_file, tmp_path / "r2", "--head-option", "colour=blue")) == 2
    assert "the classification head has no option 'colour'; its options: labels, num_labels" in one_line_error(capsys.readouterr().err, "finetune")
    assert main(finetune(checkpoint, train_file, tmp_path / "r3", "--max-length", "4096")) == 2
    assert "exceeds the encoder's max_position_embeddings=64" in one_line_error(capsys.readouterr().err, "finetune")
    assert main(["finetune", "--head", "clasification", "--encoder", str(checkpoint), "--train", str(train_file),
                 "--output", str(tmp_path / "r4")]) == 2
    assert "did you mean classification?" in one_line_error(capsys.readouterr().err, "finetune")
    assert main(finetune(checkpoint, train_file, train_file, "--max-steps", "1")) == 2     # --output names a file
    assert f"output folder {train_file} is a file; name a folder" in one_line_error(capsys.readouterr().err,
                                                                                   "finetune")
    assert main(["predict", "--model", str(tmp_path / "no-such-run"), "good film"]) == 2
    assert "no-such-run does not exist" in one_line_error(capsys.readouterr().err, "predict")
    for option, value in (("--max-steps", "0"), ("--eval-every", "-1"), ("--batch-size", "x")):
        with pytest.raises(SystemExit) as exit_:
            main(finetune(checkpoint, train_file, tmp_path / "r5", option, value))
        assert exit_.value.code == 2 and option in capsys.readouterr().err


def test_non_finite_training_is_one_line_and_predict_prints_strict_json(tmp_path, checkpoint, train_file, capsys):
    assert main(finetune(checkpoint, train_file, tmp_path / "run", "--lr", "1e30", "--warmup-ratio", "0",
                         "--epochs", "3")) == 2
    line = one_line_error(capsys.readouterr().err, "finetune")
    assert "became" in line and ("nan" in line or "inf" in line), line
    model = bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                               {"r": bertcore.create_head("classification", bertcore.BertConfig.from_pretrained(
                                   checkpoint), num_labels=1)})
    with __import__("torch").no_grad():
        model.heads["r"].classifier.bias.fill_(float("nan"))
    model.tokenizer = bertcore.Tokenizer.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path / "nan-model")
    assert main(["predict", "--model", str(tmp_path / "nan-model"), "good film"]) == 0
    out = capsys.readouterr().out.strip()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    assert json.loads(out, parse_constant=refuse) == {"input": "good film", "value": None}


def test_predict_reads_stdin_and_qa_from_the_command_line(tmp_path, checkpoint):
    cfg = bertcore.BertConfig.from_pretrained(checkpoint)
    tok = bertcore.Tokenizer.from_pretrained(checkpoint)
    encoder = bertcore.BertEncoder.from_pretrained(checkpoint)
    bertcore.TaskModel(encoder, {"s": bertcore.create_head("classification", cfg, labels=["neg", "pos"]),
                                 "q": bertcore.create_head("qa", cfg)}, tokenizer=tok).save_pretrained(tmp_path / "m")
    done = cli("predict", "--model", str(tmp_path / "m"), "--head", "s", "-", input="good film\n\n"
               '{"id": "x7", "text": "bad plot"}\n')
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and [line.get("input", line.get("id")) for line in lines] == ["good film", "x7"]
    done = cli("predict", "--model", str(tmp_path / "m"), "--head", "q", "--question", "what film ?",
               "--context", "a good film")
    answer = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert answer["input"] == {"question": "what film ?", "context": "a good film"} and "text" in answer


def test_predict_and_embed_inputs_that_do_not_fit_are_one_line(tmp_path, checkpoint, capsys):
    cfg = bertcore.BertConfig.from_pretrained(checkpoint)
    tok = bertcore.Tokenizer.from_pretrained(checkpoint)
    model = bertcore.TaskModel(bertcore.BertEncoder.from_pretrained(checkpoint),
                               {"s": bertcore.create_head("classification", cfg, labels=["neg", "pos"])}, tokenizer=tok)
    model.save_pretrained(tmp_path / "m")
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"text": "good film"}\n{"question": "what film ?"}\n', encoding="utf-8")
    assert main(["predict", "--model", str(tmp_path / "m"), "--input", str(questions)]) == 2
    assert "example 2 has no 'text' (it has question); the s head reads it" in one_line_error(
        capsys.readouterr().err, "predict")                                        # was: "error: text"
    assert main(["embed", "--encoder", str(checkpoint), "--max-length", "65", "good film"]) == 2
    assert "--max-length 65 exceeds the encoder's max_position_embeddings=64" in one_line_error(
        capsys.readouterr().err, "embed")
    assert main(["embed", "--encoder", str(checkpoint), "--max-length", "5", "good film"]) == 2
    assert ("--max-length 5 is too short: 3 tokens of text fit between [CLS] and [SEP], fewer in a pair; use 8 or "
            "more") in one_line_error(capsys.readouterr().err, "embed")          # was: "leaves no room for text"
    with pytest.raises(SystemExit) as exit_:                                   # was: range() arg 3 must not be zero
        main(["embed", "--encoder", str(checkpoint), "--batch-size", "0", "good film"])
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
    # the Python API cuts a sequence at the encoder's positions instead of failing inside it
    long_text = " ".join(["good film"] * 60)                                   # > 64 tokens
    assert model.predict([long_text], max_length=512) == model.predict([long_text], max_length=64)
