"""Launch-config sweep for the Triton attention kernels on this GPU.

For each (dtype, head_dim) it times the forward (no dropout: inference) and the
backward (dropout 0.1: training) under every candidate (block rows, block cols,
num_warps, num_stages), on two BERT batches of ~16k real tokens and 12 heads:
equal lengths 128 and mixed lengths 16-512. The best config is the one with the
lowest summed time; it is printed next to today's default and SDPA on the padded,
masked batch, ready to paste into `bertcore_kernels.attention.LAUNCH_CONFIGS`. Each
candidate runs under `bertcore_kernels.override_launch_configs`.

    python benchmarks/tune_attention.py [--dtypes bf16 fp16] [--head-dims 64 128] [--output DIR]

GPU only. Each candidate compiles once (seconds); a config that does not fit the
chip's shared memory is reported as failed and skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bertcore_kernels as K
import torch

from bertcore.bench import lib as B
from bertcore.bench.attention import lengths_for, make_inputs, mode_fn, provider_fn

FWD = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3),
       (128, 128, 8, 2), (64, 128, 4, 2), (64, 32, 4, 4)]
BWD = [(32, 32, 4, 1), (32, 32, 4, 2), (64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 8, 2),
       (128, 128, 8, 1), (128, 128, 8, 2)]
KINDS = ("equal-128", "mixed-16-512")
HEADS, TOKENS = 12, 16384
DTYPES = B.DTYPES


def time_direction(provider, inp, backward: bool) -> float:
    """ms of the forward (no dropout: inference) or the backward (dropout 0.1: training)."""
    fn, leaves = provider_fn(provider, inp, None, dropout_p=0.1 if backward else 0.0)
    return B.time_fn(mode_fn(fn, leaves, "bwd" if backward else "fwd"), "cuda")["ms"]


def sweep(dtype, head_dim, backward, inputs):
    direction = "bwd" if backward else "fwd"
    default = tuple(K.launch_config(dtype, head_dim, direction))
    results = {}
    for cfg in (BWD if backward else FWD):
        try:
            with K.override_launch_configs({(dtype, head_dim, direction): cfg}):
                results[cfg] = [time_direction("bertcore-triton", inp, backward) for inp in inputs]
        except Exception as exc:  # out of shared memory / registers on this chip
            results[cfg] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return default, results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp16"])
    ap.add_argument("--head-dims", nargs="+", type=int, default=[64, 128, 32])
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="the CSV goes to DIR/<device>/tune_attention.csv (default: benchmarks/results)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    rows, picks = [], {}
    env = B.env_row("cuda")
    for dt in a.dtypes:
        for hd in a.head_dims:
            inputs = [make_inputs(lengths_for(kind, TOKENS), HEADS, hd, DTYPES[dt], "cuda") for kind in KINDS]
            for backward in (False, True):
                direction = "bwd" if backward else "fwd"
                default, results = sweep(DTYPES[dt], hd, backward, inputs)
                sdpa = [time_direction("sdpa-mask", inp, backward) for inp in inputs]
                ok = {c: t for c, t in results.items() if not isinstance(t, str)}
                best = min(ok, key=lambda c: sum(ok[c])) if ok else None
                picks[(dt, hd, direction)] = best
                for cfg, t in results.items():
                    rows.append({**env, "dtype": dt, "head_dim": hd, "direction": direction,
                                 "config": "x".join(map(str, cfg)), "default": cfg == default,
                                 "best": cfg == best,
                                 **({f"ms_{k}": v for k, v in zip(KINDS, t)} if not isinstance(t, str)
                                    else {"error": t}),
                                 **{f"sdpa_ms_{k}": v for k, v in zip(KINDS, sdpa)}})
                B.print_table([r for r in rows if r["dtype"] == dt and r["head_dim"] == hd
                               and r["direction"] == direction],
                              ["config", "default", "best", *(f"ms_{k}" for k in KINDS),
                               *(f"sdpa_ms_{k}" for k in KINDS), "error"],
                              title=f"attention {direction} {dt} d={hd} ({HEADS} heads, ~{TOKENS} tokens)")
    out = B.results_dir("cuda", a.output) / "tune_attention.csv"
    B.write_csv(rows, out)
    print(f"\nwrote {out}\nbest (block rows, block cols, warps, stages):")
    for (dt, hd, direction), cfg in picks.items():
        print(f"  {dt} d={hd} {direction}: {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
