"""The LayerNorm / bias+GELU benchmark's Triton rows, summary and --tune run end to end
(in Triton's interpreter on the CPU, so a GPU session does not find a crash; on a GPU
machine with the real kernels): timings are stubbed, only the plumbing is checked."""
import pytest
import torch

import bertcore.bench.layer_norm as bench
from bertcore.bench import lib as B

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # the interpreter runs on CPU tensors only


@pytest.fixture
def triton_everywhere(monkeypatch, one_thread):
    monkeypatch.setattr(bench, "available", lambda provider, device: None)
    monkeypatch.setattr(B, "time_fn", lambda fn, device, **kw: (fn(), {"ms": 1.0, "ms_p20": 1.0, "ms_p80": 1.0,
                                                                      "reps": 1})[1])
    monkeypatch.setattr(B, "peak_memory", lambda fn, device: 0)
    monkeypatch.setitem(B._PEAKS, DEVICE, {"matmul_fp32_tflops": 1.0, "copy_gbps": 1.0})


def test_triton_rows_speedups_and_summary(triton_everywhere, capsys):
    ln = bench.run(device=DEVICE, dtypes=["fp32"], hiddens=[64], token_counts=[16], dropouts=[0.0, 0.1],
                   modes=["fwd", "full"], providers=["bertcore-triton", "bertcore-torch"], write=False, verbose=False)
    gelu = bench.run_bias_gelu(device=DEVICE, dtypes=["fp32"], widths=[256], token_counts=[16],
                               modes=["fwd", "full"], write=False, verbose=False)
    assert all(r["speedup_vs_torch"] == pytest.approx(1.0) for r in ln + gelu if r["provider"] == "bertcore-triton")
    lines = bench.summary(ln, gelu)
    assert lines[0].startswith("layer_norm fp32 H=64 T=16: fwd p=0 at ")
    assert "fwd+bwd p=0.1 1.00x torch" in lines[0]
    assert lines[1].startswith("bias_gelu fp32 N=256 T=16: fwd at ") and "fwd+bwd 1.00x" in lines[1]


def test_main_runs_both_ops_and_prints_the_summary(triton_everywhere, capsys):
    assert bench.main(["--device", DEVICE, "--dtypes", "fp32", "--hidden", "32", "--tokens", "8", "--dropout", "0.1",
                       "--modes", "full", "--providers", "bertcore-triton", "bertcore-torch", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "bias_gelu fp32 N=128 T=8 full" in out and "summary" in out


def test_tune_sweeps_and_prints_table_entries(triton_everywhere, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "LN_TUNE", {"fwd": [(1, 1), (4, 2)], "bwd": [(2, 2, 1)]})
    monkeypatch.setattr(bench, "GELU_TUNE", {"fwd": [(2, 64, 1)], "bwd": [(4, 64, 2, 1)]})
    rows = bench.tune(DEVICE, hiddens=[32], token_counts=[8], dtypes=["fp32"], dropouts=[0.1], out_dir=tmp_path)
    assert len(rows) == 2 + 1 + 1 + 1 and (tmp_path / "tune_layer_norm.csv").is_file()
    out = capsys.readouterr().out
    assert 'layer_norm fp32 H=32: (torch.float32, 1024, "fwd"): LaunchConfig(1, 1)' in out
    assert 'bias_gelu fp32 N=128: "bwd": LaunchConfig(4, 64, 2, 1)' in out


def test_graphs_leave_the_lone_backward_eager(triton_everywhere, monkeypatch):
    """A bwd-mode call replays the autograd graph of a forward run outside the capture: on
    an H200 every such capture failed, so --graphs times it eagerly and says so."""
    captured = []
    monkeypatch.setattr(B, "replayed", lambda call, name: (captured.append(name), (call, None))[1])
    rows = bench.run(device=DEVICE, dtypes=["fp32"], hiddens=[32], token_counts=[8], dropouts=[0.1],
                     modes=["fwd", "bwd", "full"], providers=["bertcore-triton"], write=False, verbose=False,
                     graphs=True)
    assert len(captured) == 2
    assert {r["mode"]: r["timing"] for r in rows} == {"fwd": "graph replay", "bwd": "eager", "full": "graph replay"}


def test_tune_times_replays_and_a_backward_with_its_forward(triton_everywhere, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "LN_TUNE", {"fwd": [(1, 1)], "bwd": [(2, 2, 1)]})
    monkeypatch.setattr(bench, "GELU_TUNE", {"fwd": [(2, 64, 1)], "bwd": [(4, 64, 2, 1)]})
    captured = []
    monkeypatch.setattr(B, "replayed", lambda call, name: (captured.append(name), (call, None))[1])
    rows = bench.tune(DEVICE, hiddens=[32], token_counts=[8], dtypes=["fp32"], dropouts=[0.1], out_dir=tmp_path,
                      verbose=False, graphs=True)
    assert len(captured) == len(rows) == 4
    assert {(r["op"], r["mode"]): r["timed"] for r in rows} == {
        ("layer_norm", "fwd"): "fwd", ("layer_norm", "bwd"): "full",
        ("bias_gelu", "fwd"): "fwd", ("bias_gelu", "bwd"): "full"}


def test_tune_modes_pick_the_directions(triton_everywhere, monkeypatch, tmp_path, capsys):
    # The GPU suite tunes the LayerNorm forward alone (its backward sweep is 36 compiles).
    monkeypatch.setattr(bench, "LN_TUNE", {"fwd": [(1, 1), (4, 2)], "bwd": [(2, 2, 1)]})
    assert bench.main(["--tune", "--device", DEVICE, "--ops", "layer_norm", "--modes", "fwd", "--hidden", "32",
                       "--tokens", "8", "--dropout", "0", "--dtypes", "fp32", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"fwd"): LaunchConfig' in out and '"bwd")' not in out
    with pytest.raises(SystemExit):
        bench.main(["--tune", "--device", DEVICE, "--modes", "full", "--no-write"])
    assert "--modes fwd, bwd or both" in capsys.readouterr().err
