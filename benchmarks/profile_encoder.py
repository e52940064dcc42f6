"""Where the GPU's time goes in one encoder call: kernel time by kind, bertcore against
transformers (SDPA), from `torch.profiler` on eager calls.

Eager calls launch every kernel from the host, so on a slow host their wall time is
launch-bound; the profiler's *device* time per kernel is not. Summed by kind (matrix
products, attention, LayerNorm, bias+GELU, dtype casts, other elementwise work),
it shows which kernels to improve for a graphed step, whose time is the kernels'
alone. One table per (shape, mode): total device ms per kind, for each model.

    python benchmarks/profile_encoder.py [--shapes bert-base] [--batch-size 128]
        [--batch equal-128] [--modes inference train] [--output DIR]

GPU only; bf16 autocast, the models of `bench_encoder` (identical weights).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

from bertcore.bench import lib as B
from bertcore.bench.encoder import BATCHES, SHAPES, build_models, make_batch, make_call, make_optimizer

# Kernel name patterns, first match wins; the names are CUDA's / Triton's own.
KINDS = [
    ("matmul", r"gemm|cutlass|nvjet|sm90_xmma|cublas|splitK"),
    ("attention", r"attention|flash|fmha|sdpa|mem_eff"),
    ("layer_norm", r"layer_norm|layernorm"),
    ("bias_gelu", r"bias_gelu|gelu"),
    ("cast/copy", r"copy|cast|to_copy|convert"),
    ("dropout/rng", r"dropout|philox|seed|fused_dropout"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("reduce", r"reduce|sum|norm"),
]


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((k for k, pattern in KINDS if re.search(pattern, lower)), "other elementwise")


def device_times(fn, reps: int = 3) -> dict[str, float]:
    """Device ms per kernel kind, averaged over `reps` calls (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue                     # host-side events (runtime calls): their device time is their kernels'
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if us:
            totals[kind_of(e.key)] = totals.get(kind_of(e.key), 0.0) + us / 1e3 / reps
    return totals


def calls(models, provider, batch, mode):
    """The benchmark's own eager call of `provider` (bench_encoder.make_call), bf16 autocast."""
    model = models[provider]
    model.train(mode == "train")
    return make_call(provider, model, batch, mode, make_optimizer(model, "cuda"), "bf16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["bert-base"])
    ap.add_argument("--batch", choices=list(BATCHES), default="equal-128")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--modes", nargs="+", choices=["inference", "train"], default=["inference", "train"])
    B.add_output_arguments(ap)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("the profile reads device (CUDA) kernel times: it needs a GPU")
    providers = ["bertcore-packed", "hf-sdpa"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in a.shapes:
            models = build_models(shape, providers, "cuda", Path(tmp))
            batch = make_batch(a.batch, a.batch_size, models["hf-sdpa"].config.vocab_size, "cuda")
            for mode in a.modes:
                times = {p: device_times(calls(models, p, batch, mode)) for p in providers}
                kinds = sorted({k for t in times.values() for k in t}, key=lambda k: -times["hf-sdpa"].get(k, 0.0))
                table = [{"kind": k, **{f"{p}_ms": times[p].get(k, 0.0) for p in providers}} for k in kinds]
                table.append({"kind": "total", **{f"{p}_ms": sum(times[p].values()) for p in providers}})
                B.print_table(table, list(table[0]), title=f"device ms per call, {shape} {a.batch} x{a.batch_size} "
                                                            f"{mode} (bf16 autocast)")
                rows += [{"shape": shape, "batch": f"{a.batch} x{a.batch_size}", "mode": mode, **r} for r in table]
            del models
    if not a.no_write:
        out = B.results_dir("cuda", a.output)
        B.write_csv(rows, out / "profile-encoder.csv")
        print(f"wrote {out / 'profile-encoder.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
