"""`bertcore finetune / pretrain / predict` end to end on tiny models (the demo: tests/cli/test_demo.py)."""
import json
import logging
import random

import pytest
import torch

import bertcore
from bertcore.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

WORDS = "good great fine bad awful poor movie film plot actor the a".split()


def reviews(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        word = rng.choice(WORDS[:3] if label == "pos" else WORDS[3:6])
        yield {"text": f"{word} {rng.choice(WORDS[6:])}", "label": label}


def test_finetune_then_predict(tmp_path, checkpoint, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in reviews(64)), encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(train),
               "--eval", str(train), "--output", str(out), "--epochs", "8", "--batch-size", "16", "--lr", "3e-3",
               "--no-progress"])
    assert rc == 0
    assert "model saved to" in capsys.readouterr().out
    assert (out / "model" / "heads" / "classification" / "head.json").is_file()
    assert (out / "metrics.jsonl").is_file() and (out / "best").is_dir()

    held = list(reviews(8, seed=1))
    rc = main(["predict", "--model", str(out / "model"), *[r["text"] for r in held]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == len(held)
    # what the saved model predicts is what the trained one in memory scores (one word decides)
    model = bertcore.TaskModel.from_pretrained(out / "model")
    assert [json.loads(line)["label"] for line in lines] == \
        [p["label"] for p in model.predict([r["text"] for r in held], head="classification")]
    assert sum(json.loads(line)["label"] == r["label"] for line, r in zip(lines, held)) >= 6

    # a test file the run never saw, scored from the command line as the saved model scores it in Python
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in reviews(40, seed=2)), encoding="utf-8")
    rc = main(["evaluate", "--model", str(out / "model"), "--data", str(test), "--output", str(tmp_path / "m.json")])
    printed = capsys.readouterr().out
    assert rc == 0 and json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == json.loads(printed)
    scores = json.loads(printed)
    want = model.evaluate(bertcore.data.load_examples(test), head="classification", max_length=128)
    assert scores == {"head": "classification", "examples": 40, **want} and scores["accuracy"] >= 0.75
    test.write_text('{"text": "good film", "label": "pos"}\n{"text": "so so", "label": "meh"}\n', encoding="utf-8")
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(test)]) == 2
    assert "test.jsonl:2: label 'meh'" in capsys.readouterr().err


def test_finetune_bad_data_names_file_and_line(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": "bad" "label": "neg"}\n', encoding="utf-8")
    rc = main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(bad),
               "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:2: invalid JSON" in err and "one JSON object per line" in err

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "good"}\n', encoding="utf-8")
    rc = main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(missing),
               "--output", str(tmp_path / "run")])
    assert rc == 2 and "missing label" in capsys.readouterr().err


def test_pretrain_cli(tmp_path, capsys, caplog):
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
                                            for _ in range(rng.randint(2, 5))) for _ in range(60)), encoding="utf-8")
    out = tmp_path / "pt"
    with caplog.at_level(logging.INFO, logger="bertcore.pretraining"):
        # --eval-fraction: the few-held-out-pairs warning told CLI users to raise an option they did not have
        rc = main(["pretrain", "--corpus", str(corpus), "--output", str(out), "--vocab-size", "100",
                   "--hidden-size", "32", "--layers", "1", "--heads", "2", "--max-length", "32",
                   "--max-steps", "4", "--batch-size", "8", "--eval-fraction", "0.2", "--no-progress"])
    assert rc == 0
    assert "NSP accuracy" in capsys.readouterr().out
    assert "from 48 documents" in caplog.text      # 12 of the 60 held out
    model = bertcore.TaskModel.from_pretrained(out / "model")
    assert set(model.heads) == {"mlm", "nsp"}
    assert (out / "tokenizer" / "vocab.txt").is_file()


def test_help_is_there(capsys):
    for command in ("finetune", "pretrain", "predict", "evaluate", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: bertcore " + command in capsys.readouterr().out


def test_one_seed_repeats_a_run_bit_for_bit(tmp_path, checkpoint):
    """--seed covers the head's initial weights, dropout, data order: two CLI runs with one
    seed save identical weights (the head used to be built before anything was seeded)."""
    from safetensors.torch import load_file
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in reviews(32)), encoding="utf-8")
    saved = {}
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(train),
                     "--output", str(tmp_path / run), "--max-steps", "3", "--batch-size", "8", "--seed", seed,
                     "--no-progress"]) == 0
        model = tmp_path / run / "model"
        saved[run] = {**load_file(model / "encoder" / "model.safetensors"),
                      **load_file(model / "heads" / "classification" / "head.safetensors")}
    assert all(torch.equal(saved["a"][k], saved["b"][k]) for k in saved["a"])
    assert not torch.equal(saved["a"]["classifier.weight"], saved["c"]["classifier.weight"])


def test_regression_and_multi_label_from_the_command_line(tmp_path, checkpoint, capsys):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"text": r["text"], "label": 0.5 + (r["label"] == "pos")}) + "\n"
                              for r in reviews(32)), encoding="utf-8")
    assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(scores),
                 "--eval", str(scores), "--output", str(tmp_path / "sts"), "--max-steps", "4", "--batch-size", "8",
                 "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "options read from" in out.err and "num_labels=1" in out.err       # inferred, and said
    assert "final evaluation (best checkpoint, step 4): " in out.out and "pearson=" in out.out
    head = bertcore.TaskModel.from_pretrained(tmp_path / "sts" / "model").heads["classification"]
    assert head.problem == "regression" and head.main_metric == "pearson"
    tags = tmp_path / "tags.jsonl"
    tags.write_text("".join(json.dumps({"text": r["text"], "label": [r["label"], "any"]}) + "\n"
                            for r in reviews(16)), encoding="utf-8")
    assert main(["finetune", "--head", "classification", "--multi-label", "--encoder", str(checkpoint), "--train",
                 str(tags), "--output", str(tmp_path / "ml"), "--max-steps", "2", "--batch-size", "8",
                 "--no-progress"]) == 0
    head = bertcore.TaskModel.from_pretrained(tmp_path / "ml" / "model").heads["classification"]
    assert head.problem == "multi_label" and head.labels == ["any", "neg", "pos"]
    # a CSV cell "neg,any" was one class of its own and the task single-label, silently
    csv = tmp_path / "tags.csv"
    csv.write_text("text,label\n" + "".join(f'{r["text"]},"{r["label"]},any"\n' for r in reviews(16)), encoding="utf-8")
    common = ["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(csv), "--output",
              str(tmp_path / "csv"), "--max-steps", "2", "--no-progress"]
    capsys.readouterr()
    assert main([*common, "--multi-label"]) == 2
    assert "no example of" in capsys.readouterr().err
    assert main([*common, "--multi-label", "--regression"]) == 2
    assert "--multi-label and --regression contradict each other" in capsys.readouterr().err
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in reviews(16)), encoding="utf-8")
    assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(labels),
                 "--output", str(tmp_path / "spaced"), "--max-steps", "2", "--no-progress", "--labels", "neg, pos"]) == 0
    head = bertcore.TaskModel.from_pretrained(tmp_path / "spaced" / "model").heads["classification"]
    assert head.labels == ["neg", "pos"]                                     # was: "neg", " pos"


def test_an_empty_label_cell_is_named_by_file_and_line(tmp_path, checkpoint, capsys):
    """A CSV row with its label cell empty was read as a class named '' and refused as
    "labels: label 1 of 3 is empty; name every class", naming neither the file nor the row."""
    data = tmp_path / "train.csv"
    rows = [f'{r["text"]},{r["label"]}' for r in reviews(6)]
    rows[3] = rows[3].rsplit(",", 1)[0] + ","          # line 5 of the file (after the header)
    data.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert main(["finetune", "--head", "classification", "--encoder", str(checkpoint), "--train", str(data),
                 "--output", str(tmp_path / "out"), "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {data}:5: label '' is not a class name" in err, err
