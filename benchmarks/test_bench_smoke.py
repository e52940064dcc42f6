"""Smoke test of the benchmark code (part of `make test`, well under a minute): tiny
shapes, few repeats, nothing written under benchmarks/results/."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention  # noqa: E402
import bench_encoder  # noqa: E402
import bench_layer_norm  # noqa: E402
import benchlib  # noqa: E402


def test_timer_and_peak_memory():
    t = benchlib.time_fn(lambda: torch.ones(64, 64) @ torch.ones(64, 64), warmup=1, rep=3, min_time=0)
    assert t["ms_p20"] <= t["ms"] <= t["ms_p80"] and t["reps"] >= 3
    peak = benchlib.peak_memory(lambda: torch.empty(1 << 20).fill_(1.0))  # 4 MiB tensor
    assert 4 << 20 <= peak < 8 << 20


def test_attention_rows(tmp_path):
    rows = bench_attention.run(quick=True, device="cpu", threads=1, kinds=["equal-16", "mixed-4-16"],
                               head_dims=[32], modes=["fwd", "full"], tokens=48, out_dir=tmp_path,
                               verbose=False)
    providers = {r["provider"] for r in rows}
    assert {"bertcore-repad", "bertcore-runs", "sdpa-mask", "eager"} <= providers
    assert "bertcore-triton" not in providers or torch.cuda.is_available()
    assert all(r["tflops"] > 0 and r["ms"] > 0 and r["device"] for r in rows)
    assert (tmp_path / "attention-quick.csv").is_file() and (tmp_path / "attention-quick-fwd.png").is_file()


def test_layer_norm_rows(tmp_path):
    rows = bench_layer_norm.run(quick=True, device="cpu", threads=1, hiddens=[32], token_counts=[64],
                                dropouts=[0.0, 0.1], modes=["fwd", "bwd"], out_dir=tmp_path, verbose=False)
    assert len(rows) == 2 * 2 * 3 and all(r["gbps"] > 0 for r in rows)
    assert (tmp_path / "layer_norm-quick.csv").is_file()


def test_encoder_rows(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_encoder.SHAPES, "tiny", dict(hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=2, intermediate_size=64))
    monkeypatch.setitem(bench_encoder.BATCHES, "mixed-4-16", (4, 16))
    monkeypatch.setitem(bench_encoder.SLACK, "tiny", 1.0)
    rows = bench_encoder.run(device="cpu", threads=1, shapes=["tiny"], batches=["mixed-4-16"],
                             providers=list(bench_encoder.PROVIDERS), rounds=2, batch_size=3,
                             vocab_size=200, out_dir=tmp_path, verbose=False)
    assert len(rows) == 2 * 4  # modes x providers
    assert {r["provider"] for r in rows} == set(bench_encoder.PROVIDERS)
    assert all(r["tokens_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert all(r["speedup_vs_hf_sdpa"] == pytest.approx(1.0) for r in rows if r["provider"] == "hf-sdpa")
    assert bench_encoder.summary(rows) and (tmp_path / "encoder.csv").is_file()
