"""Smoke test of the benchmark code, bertcore.bench (part of `make test`, well under a
minute): tiny shapes, few repeats, nothing written under benchmarks/results/."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertcore.bench.attention as bench_attention
import bertcore.bench.encoder as bench_encoder
import bertcore.bench.finetune as bench_finetune
import bertcore.bench.layer_norm as bench_layer_norm
import bertcore.bench.lib as benchlib
from bertcore import cli


def test_timer_and_peak_memory():
    t = benchlib.time_fn(lambda: torch.ones(64, 64) @ torch.ones(64, 64), warmup=1, rep=3, min_time=0)
    assert t["ms_p20"] <= t["ms"] <= t["ms_p80"] and t["reps"] >= 3
    peak = benchlib.peak_memory(lambda: torch.empty(1 << 20).fill_(1.0))  # 4 MiB tensor
    assert 4 << 20 <= peak < 8 << 20


def test_cpu_peak_memory_keeps_stderr_quiet(capfd, monkeypatch):
    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)
    benchlib.peak_memory(lambda: torch.ones(256, 256) * 2)
    assert "profiler_start" not in capfd.readouterr().err     # torch 2.13's kineto printed two lines a call
    assert "KINETO_LOG_LEVEL" not in os.environ


def test_attention_rows(tmp_path):
    rows = bench_attention.run(quick=True, device="cpu", threads=1, kinds=["equal-16", "mixed-4-16"],
                               head_dims=[32], modes=["fwd", "full"], tokens=48, out_dir=tmp_path,
                               verbose=False)
    providers = {r["provider"] for r in rows}
    assert {"bertcore-repad", "bertcore-runs", "sdpa-mask", "eager"} <= providers
    assert "bertcore-triton" not in providers or torch.cuda.is_available()
    assert all(r["tflops"] > 0 and r["ms"] > 0 and r["device"] for r in rows)
    assert (tmp_path / "attention-quick.csv").is_file() and (tmp_path / "attention-quick-fwd.png").is_file()


def test_attention_with_dropout_reaches_every_provider_that_has_it(tmp_path, monkeypatch):
    seen = []
    real = bench_attention.provider_fn
    monkeypatch.setattr(bench_attention, "provider_fn",
                        lambda p, inp, lengths, dropout_p=0.0: seen.append((p, dropout_p)) or real(p, inp, lengths, dropout_p))
    rows = bench_attention.run(quick=True, device="cpu", threads=1, kinds=["mixed-4-16"], head_dims=[32],
                               modes=["full"], tokens=48, providers=["bertcore-runs", "sdpa-mask", "torch-varlen"],
                               dropout_p=0.1, write=False, verbose=False, name="x")
    assert {p for p, _ in seen} == {"bertcore-runs", "sdpa-mask"} and all(d == 0.1 for _, d in seen)
    assert all(r["dropout_p"] == 0.1 and r["timing"] == "eager" for r in rows)
    assert bench_attention.available("torch-varlen", "cuda", "bf16", dropout_p=0.1)   # it has no dropout
    with pytest.raises(ValueError, match="CUDA"):
        bench_attention.run(device="cpu", graphs=True)


def test_layer_norm_rows(tmp_path):
    rows = bench_layer_norm.run(quick=True, device="cpu", threads=1, hiddens=[32], token_counts=[64],
                                dropouts=[0.0, 0.1], modes=["fwd", "bwd"], out_dir=tmp_path, verbose=False)
    assert len(rows) == 2 * 2 * 3 + 1 and all(r["gbps"] > 0 for r in rows)    # + the copy of fwd's bytes, once
    copy = [r for r in rows if r["provider"] == "copy"]
    assert [(r["mode"], r["dropout"]) for r in copy] == [("fwd", 0.0)]
    assert (tmp_path / "layer_norm-quick.csv").is_file()


def test_encoder_rows(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_encoder.SHAPES, "tiny", dict(hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=2, intermediate_size=64))
    monkeypatch.setitem(bench_encoder.BATCHES, "mixed-4-16", (4, 16))
    rows = bench_encoder.run(device="cpu", threads=1, shapes=["tiny"], batches=["mixed-4-16"],
                             providers=list(bench_encoder.PROVIDERS), rounds=2, batch_size=3,
                             vocab_size=200, out_dir=tmp_path, verbose=False)
    assert len(rows) == 2 * 4  # modes x providers
    assert {r["provider"] for r in rows} == set(bench_encoder.PROVIDERS)
    assert all(r["tokens_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert all(r["speedup_vs_hf_sdpa"] == pytest.approx(1.0) for r in rows if r["provider"] == "hf-sdpa")
    assert bench_encoder.summary(rows) and (tmp_path / "encoder.csv").is_file()


def test_results_go_under_the_current_folder_unless_told(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert benchlib.results_dir("cpu").resolve() == tmp_path / "bench-results" / benchlib.device_slug("cpu")
    assert benchlib.results_dir("cpu", tmp_path / "x") == tmp_path / "x" / benchlib.device_slug("cpu")


def test_bertcore_bench_writes_under_the_current_folder(tmp_path, monkeypatch):
    calls = []
    # finetune too: it ran the real MiniLM fine-tuning (30 s of the suite); test_bench_finetune.py
    # runs the command on a tiny model
    for module in (bench_attention, bench_layer_norm, bench_encoder, bench_finetune):
        monkeypatch.setattr(module, "run", lambda module=module, **kw: calls.append((module.__name__, kw)))
    monkeypatch.setattr(bench_layer_norm, "run_bias_gelu", lambda **kw: calls.append(("bias_gelu", kw)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "all", "--quick", "--device", "cpu", "--threads", "1"]) == 0
    assert [name for name, _ in calls] == ["bertcore.bench.attention", "bertcore.bench.layer_norm", "bias_gelu",
                                           "bertcore.bench.encoder", "bertcore.bench.finetune"]
    out = {kw["out_dir"].resolve() for _, kw in calls}
    assert out == {tmp_path / "bench-results" / benchlib.device_slug("cpu")}
    calls.clear()
    assert cli.main(["bench", "kernels", "--device", "cpu", "--output", str(tmp_path / "elsewhere")]) == 0
    assert {kw["out_dir"] for _, kw in calls} == {tmp_path / "elsewhere" / benchlib.device_slug("cpu")}


def test_the_library_never_imports_the_checkout_benchmarks_folder(tmp_path):
    code = ("import sys, bertcore.cli, bertcore.bench.attention, bertcore.bench.layer_norm, "
            "bertcore.bench.encoder\n"
            "assert not any('benchmarks' in p for p in sys.path), sys.path\n"
            "assert 'benchlib' not in sys.modules and 'bench_encoder' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_bench_encoder_without_transformers_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)                    # import raises ImportError
    assert cli.main(["bench", "encoder", "--no-write"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install transformers" in err


def test_thin_scripts_run_the_package(tmp_path):
    script = Path(__file__).resolve().parent / "bench_layer_norm.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu", "--threads", "1", "--hidden", "32",
                           "--tokens", "64", "--dropout", "0", "--modes", "fwd", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / benchlib.device_slug("cpu") / "layer_norm-quick.csv").is_file()


def _script(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_sorts_kernels_into_kinds():
    profile = _script("profile_encoder")
    names = {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n": "matmul", "_attention_bwd_kernel": "attention",
             "pytorch_flash::flash_bwd_dq_dk_dv_loop_kernel": "attention", "_layer_norm_fwd_kernel": "layer_norm",
             "at::native::vectorized_layer_norm_kernel<float>": "layer_norm", "_bias_gelu_bwd_kernel": "bias_gelu",
             "at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>": "cast/copy",
             "multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
             "vectorized_elementwise_kernel<CUDAFunctor_add<float>>": "other elementwise"}
    assert {n: profile.kind_of(n) for n in names} == names
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):                        # one argparse line: it needs a GPU
            profile.main(["--shapes", "minilm"])


def test_host_cost_runs_with_the_launches_stubbed():
    # a subprocess: the script replaces the kernels' launch objects in the modules it imports
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("host_cost.py")), "--layers", "1",
                           "--calls", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inference: bertcore" in done.stdout and "training step" in done.stdout


def test_demo_ablation_csvs_keep_older_rows(tmp_path):
    """A CSV that gains a column (each encoder's rate) keeps its older rows."""
    ablations = _script("demo_ablations")
    ablations.merge_csv(tmp_path / "lifts.csv", [{"recipe": "a", "lift": 1}], ("recipe",))
    ablations.merge_csv(tmp_path / "lifts.csv", [{"recipe": "b", "lift": 2, "random_rate": 4e-3}], ("recipe",))
    assert (tmp_path / "lifts.csv").read_text() == "recipe,lift,random_rate\na,1,\nb,2,0.004\n"


def test_every_recorded_demo_recipe_reruns():
    """Each recipe in the committed CSVs is still in RECIPES and builds a DemoSize; the
    ones measured on an earlier demo keep its heads, its one NER rate, and its pretraining
    without the contrastive phase."""
    import csv
    import dataclasses
    from bertcore.demo import DemoSize
    ablations = _script("demo_ablations")
    folder = Path(__file__).with_name("results") / "amd-epyc-2-cores"
    recorded = {row["recipe"].split(",")[0] for name in ("demo-ablations.csv", "demo-ablation-lifts.csv")
                for row in csv.DictReader((folder / name).open())}
    assert recorded - set(ablations.RECIPES) == set()
    sizes = {name: dataclasses.replace(DemoSize(), **{k: v for k, v in fields.items() if k != "step_scale"})
             for name, fields in ablations.RECIPES.items()}
    assert sizes["mixed-spans"] == DemoSize()
    mixed = {"mixed-spans", "one-epoch", "two-epochs"}                   # the demo's pretraining
    assert all(dataclasses.replace(sizes[name], finetune_min_epochs=0.0) == DemoSize() for name in mixed)
    second = {"contrastive-spans", "spans-lr-1e-3", "spans-1000-steps"}   # a second phase, not mixed in
    assert all(sizes[name].contrastive_steps > 0 and not sizes[name].contrastive_mixed for name in second)
    older = set(sizes) - second - mixed                                  # MLM + NSP alone
    assert all(sizes[name].contrastive_steps == 0 and not sizes[name].contrastive_mixed for name in older)
    assert all(sizes[name].heads == 2 for name in ("two-heads", "two-heads-reviews-only", "whole-word", "two-layers"))
    assert all(sizes[name].ner_rates == (4e-3,) for name in ("one-ner-rate", "two-heads", "reviews-only"))


def test_tune_attention_times_graph_replays_with_the_forward_for_backwards(monkeypatch):
    """The sweep times replays (eager calls at 16k tokens are host-bound); a backward is
    captured with its forward, since a lone backward cannot be (seen on an H200)."""
    tune = _script("tune_attention")
    inp = bench_attention.make_inputs([5, 3], 2, 16, torch.float32, "cpu")
    replayed = []

    def fake_replayed(call, name):
        replayed.append(name)
        return call, None
    monkeypatch.setattr(benchlib, "replayed", fake_replayed)
    monkeypatch.setattr(benchlib, "time_fn", lambda fn, device, **kw: (fn(), {"ms": 1.0})[1])
    assert tune.time_direction("sdpa-mask", inp, "fwd", device="cpu") == 1.0
    assert tune.time_direction("sdpa-mask", inp, "bwd", device="cpu") == 1.0
    assert replayed == ["sdpa-mask fwd", "sdpa-mask full"]
    monkeypatch.setattr(benchlib, "replayed", lambda call, name: (call, "AcceleratorError: x"))
    with pytest.raises(RuntimeError, match="capture failed: AcceleratorError"):
        tune.time_direction("sdpa-mask", inp, "fwd", device="cpu")
