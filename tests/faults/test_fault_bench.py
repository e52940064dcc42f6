"""Fault suite, `bertcore bench`: its inputs (--threads, BENCH_THREADS, the thin scripts'
flags), its environment (matplotlib or a recent transformers missing, odd device names)
and its outputs (a file where the results folder goes, a read-only or full disk). Each
ends in one line naming the problem and the fix, before any timing, or runs without
what is optional; the sweeps are stubbed or tiny."""
import functools
import os
import sys

import pytest
import torch

import bertcore.bench.attention as bench_attention
import bertcore.bench.encoder as bench_encoder
import bertcore.bench.finetune as bench_finetune
import bertcore.bench.layer_norm as bench_layer_norm
import bertcore.bench.lib as benchlib
from bertcore.cli import main


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bertcore bench: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def sweeps(monkeypatch):
    """The sweeps stubbed: each call's (name, kwargs) recorded, nothing timed."""
    calls = []
    for module in (bench_attention, bench_layer_norm, bench_encoder, bench_finetune):
        monkeypatch.setattr(module, "run", lambda module=module, **kw: calls.append((module.__name__, kw)))
    monkeypatch.setattr(bench_layer_norm, "run_bias_gelu", lambda **kw: calls.append(("bias_gelu", kw)))
    return calls


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fake_run(*args, **kw):
    return {"setup_s": 1.0, "fit_s": 2.0, "accuracy": 0.5, "eval_loss": 0.7, "train_loss": 0.7, "evaluations": 1,
            "final_step": 20, "written_bytes": 1, "out_bytes": 1}


def test_bench_finetune_without_matplotlib_writes_its_csv(tmp_path, monkeypatch, capsys, keep_threads):
    # was: warm_imports imported matplotlib unconditionally: "import of matplotlib halted", exit 2, nothing
    # written, though the PNG is the only thing that needs it
    monkeypatch.setitem(bench_finetune.RUNNERS, "bertcore", fake_run)
    monkeypatch.setitem(bench_finetune.RUNNERS, "transformers", fake_run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "finetune", "--quick", "--threads", "1", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / benchlib.device_slug("cpu")
    assert (folder / "finetune-quick.csv").is_file() and not list(folder.glob("*.png"))
    assert "no PNG: matplotlib is missing" in out


def test_bench_finetune_refuses_a_transformers_too_old_before_any_run(monkeypatch, capsys, tmp_path):
    # was: TrainingArguments(eval_strategy=...) raised a TypeError after bertcore's run, minutes in
    import transformers
    ran = []
    for name in bench_finetune.LIBRARIES:
        monkeypatch.setitem(bench_finetune.RUNNERS, name, lambda *a, **k: ran.append(a) or fake_run())
    monkeypatch.setattr(transformers, "__version__", "4.40.2")
    assert main(["bench", "finetune", "--quick", "--threads", "1", "--output", str(tmp_path)]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "4.40.2" in error and "pip install 'transformers>=4.41'" in error and not ran


def test_bench_threads_in_the_environment_empty_or_not_a_number(monkeypatch, capsys, keep_threads, tmp_path):
    monkeypatch.setenv("BENCH_THREADS", "")                    # `export BENCH_THREADS=`: unset, all cores
    assert benchlib.set_threads() == torch.get_num_threads() == (os.cpu_count() or 1)   # was: int('') failed
    monkeypatch.setenv("BENCH_THREADS", "two")
    assert main(["bench", "kernels", "--device", "cpu", "--output", str(tmp_path)]) == 2
    error = one_line_error(capsys.readouterr().err)                # was: "invalid literal for int() ..."
    assert "BENCH_THREADS='two'" in error and "--threads" in error


def test_threads_beyond_the_machines_cores_is_refused_before_any_sweep(sweeps, capsys, tmp_path):
    # was: accepted; torch takes any count, OpenMP then oversubscribes the cores (or cannot make the threads)
    assert main(["bench", "kernels", "--device", "cpu", "--threads", "100000", "--output", str(tmp_path)]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "--threads 100000" in error and f"--threads {os.cpu_count()} or fewer" in error and not sweeps


@pytest.mark.parametrize("flag", ["0", "-1"])
def test_thin_scripts_refuse_threads_below_one(flag, capsys):
    # was: -1 a RuntimeError traceback from torch.set_num_threads; 0 silently all cores
    for module in (bench_attention, bench_layer_norm, bench_encoder, bench_finetune):
        with pytest.raises(SystemExit) as done:
            module.main(["--threads", flag, "--no-write"])
        assert done.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("module,argv,message", [
    (bench_encoder, ["--rounds", "-1"], "must be 1 or more"),             # was: "no median for empty data"
    (bench_encoder, ["--rounds", "0"], "must be 1 or more"),              # was: the default 9, silently
    (bench_encoder, ["--batch-sizes", "0"], "must be 1 or more"),         # was: "max() arg is an empty sequence"
    (bench_attention, ["--lengths", "foo-12"], "expected equal-L or mixed-LO-HI"),   # was: IndexError
    (bench_attention, ["--lengths", "equal-0"], "expected equal-L or mixed-LO-HI"),  # was: ZeroDivisionError
    (bench_attention, ["--lengths", "mixed-64-16"], "1 <= LO <= HI"),
    (bench_attention, ["--head-dims", "0"], "must be 1 or more"),         # was: ZeroDivisionError
    (bench_layer_norm, ["--dropout", "1.5"], "must be in [0, 1)"),        # was: the kernel's traceback
    (bench_layer_norm, ["--tokens", "0"], "must be 1 or more"),           # was: 0 GB/s, measured
])
def test_bench_scripts_refuse_sizes_and_rates_that_cannot_run(module, argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        module.main([*argv, "--no-write"])
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_bench_threads_in_the_environment_beyond_the_cores_is_refused(monkeypatch, keep_threads):
    monkeypatch.setenv("BENCH_THREADS", str((os.cpu_count() or 1) + 1))   # was: run oversubscribed, rows recorded
    with pytest.raises(ValueError, match=r"BENCH_THREADS=\d+, but this machine has \d+ cores"):
        benchlib.set_threads()


def test_a_device_name_without_letters_or_digits_gets_a_folder_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(benchlib, "device_name", lambda device: "???")
    assert benchlib.results_dir("cpu", tmp_path) == tmp_path / "cpu"     # was: tmp_path itself


def test_a_file_where_the_device_folder_goes_is_one_line_with_the_fix(tmp_path, sweeps, capsys):
    blocker = tmp_path / benchlib.device_slug("cpu")
    blocker.write_text("mine")
    assert main(["bench", "kernels", "--device", "cpu", "--threads", "1", "--output", str(tmp_path)]) == 2
    error = one_line_error(capsys.readouterr().err)                # was: "[Errno 17] File exists: '...'"
    assert f"{blocker} is a file" in error and "--output" in error
    assert blocker.read_text() == "mine" and not sweeps


def test_no_write_runs_in_a_read_only_folder(read_only_disk, monkeypatch, sweeps, capsys):
    monkeypatch.chdir(read_only_disk)
    # was: the default --output was checked even with --no-write: "cannot write in .", exit 2
    assert main(["bench", "kernels", "--device", "cpu", "--threads", "1", "--no-write"]) == 0
    assert [kw["out_dir"] for _, kw in sweeps] == [None] * 3
    sweeps.clear()
    assert main(["bench", "kernels", "--device", "cpu", "--threads", "1"]) == 2   # writing there: refused first
    error = one_line_error(capsys.readouterr().err)
    assert "bench-results" in error and "--no-write" in error and not sweeps


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(small_disk, monkeypatch, capsys, keep_threads):
    # a guard (this held before): the atomic write fails whole, naming the CSV and the fix
    _fill(small_disk)
    monkeypatch.setattr(bench_attention, "run", functools.partial(
        bench_attention.run, kinds=["equal-16"], head_dims=[32], modes=["fwd"], tokens=32,
        providers=["sdpa-mask", "eager"]))
    monkeypatch.setattr(bench_layer_norm, "run", lambda **kw: None)
    monkeypatch.setattr(bench_layer_norm, "run_bias_gelu", lambda **kw: None)
    out = small_disk / "results"
    assert main(["bench", "kernels", "--quick", "--device", "cpu", "--threads", "1", "--output", str(out)]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "attention-quick.csv" in error and "the disk is full" in error
    assert not [p for p in out.rglob("*") if p.is_file()]


def _fill(folder):
    try:
        with open(folder / "fill", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError:
        pass


def test_the_encoder_summary_says_when_the_graphs_provider_ran_eagerly(capsys):
    # was: a bertcore-graphs row whose capture failed (timed eagerly) was summarised as the graphs' speed-up
    common = {"shape": "minilm", "case": "equal-128 x16", "mode": "inference", "batch": "equal-128",
              "batch_size": 16, "device_type": "cuda", "dtype": "bf16", "threads": "", "peak_mb": 1.0,
              "peak_vs_hf_sdpa": 1.0, "tokens_per_s": 2.0}
    rows = [dict(common, provider="hf-sdpa", ms=2.0, speedup_vs_hf_sdpa=1.0),
            dict(common, provider="bertcore-graphs", ms=1.0, speedup_vs_hf_sdpa=2.0,
                 graph_failed="RuntimeError: capture failed")]
    [row] = bench_encoder.summary(rows)
    assert row["provider"] == "bertcore-graphs (capture failed: eager)"
    assert "capture failed" in capsys.readouterr().out
    [row] = bench_encoder.summary([rows[0], dict(rows[1], graph_failed="")])
    assert row["provider"] == "bertcore-graphs"


def test_ctrl_c_mid_sweep_leaves_the_last_complete_csv(tmp_path, monkeypatch, capsys, keep_threads):
    # a guard (this held before): a sweep writes its CSV whole at its end, atomically, so Ctrl-C
    # leaves the previous run's file as it was, and no temp file
    folder = tmp_path / benchlib.device_slug("cpu")
    folder.mkdir()
    (folder / "attention-quick.csv").write_text("the last complete run\n")
    monkeypatch.setattr(bench_attention, "run", functools.partial(
        bench_attention.run, kinds=["equal-16", "equal-32"], head_dims=[32], modes=["fwd"], tokens=32,
        providers=["sdpa-mask"]))
    monkeypatch.setattr(benchlib, "machine_peaks", lambda device, quick=False: {"matmul_fp32_tflops": 1.0,
                                                                                "copy_gbps": 1.0})
    timed = []
    real = benchlib.time_fn

    def time_fn(*args, **kw):
        timed.append(1)
        if len(timed) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(benchlib, "time_fn", time_fn)
    assert main(["bench", "kernels", "--quick", "--device", "cpu", "--threads", "1", "--output", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["attention-quick.csv"]
    assert (folder / "attention-quick.csv").read_text() == "the last complete run\n"


def test_bench_all_on_a_gpu_checks_finetunes_cpu_folder_before_any_sweep(tmp_path, monkeypatch, sweeps, capsys):
    # was: the CPU folder of the fine-tuning run was made after the kernel and encoder sweeps, so a file
    # in its way ended the run there, their minutes spent
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(benchlib, "device_name", lambda device: "Fake GPU" if device == "cuda" else "Fake CPU")
    (tmp_path / "fake-cpu").write_text("mine")
    assert main(["bench", "all", "--device", "cuda", "--threads", "1", "--output", str(tmp_path)]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert f"{tmp_path / 'fake-cpu'} is a file" in error and not sweeps
