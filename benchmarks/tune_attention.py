"""Launch-config sweep for the Triton attention kernels on this GPU.

For each (dtype, head_dim) and direction it times every candidate (block rows,
block cols, num_warps, num_stages) on two BERT batches of ~16k real tokens and 12
heads, one per length class of `LAUNCH_CONFIGS`: equal lengths 128 ("short",
max_seqlen <= 128) and mixed lengths 16-512 ("long"). Directions:

  fwd      the forward, no dropout (inference)
  bwd      the default one-pass backward (dQ by atomics), dropout 0.1 (training);
           block rows = query rows per step, block cols = keys per program
  bwd_det  the deterministic two-pass backward, dropout 0.1; square tiles (block rows)

Every call is timed as a CUDA-graph replay (`lib.replayed`): at 16k tokens an eager
call is bound by the host's launches, so the first H200 sweep ranked SDPA by its launch
cost (54 µs for a forward whose kernels take 29). A lone backward cannot be captured
(its forward ran outside the graph), so the backward directions time forward +
backward; the forward is the same for every backward candidate, so the ranking holds.

The best config per length class is the fastest; it is printed next to today's
default, SDPA on the padded, masked batch and PyTorch's varlen FlashAttention
(`torch.nn.attention.varlen.varlen_attn`, no dropout: a bound, where torch has it),
and as `_DEFAULTS` rows ready to paste into `bertcore_kernels/attention.py`. Each
candidate runs under `bertcore_kernels.override_launch_configs`.

    python benchmarks/tune_attention.py [--dtypes bf16 fp16] [--head-dims 64 128]
        [--directions fwd bwd bwd_det] [--output DIR]

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
from bertcore.bench.attention import available, lengths_for, make_inputs, mode_fn, provider_fn

CANDIDATES = {
    "fwd": [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3),
            (128, 128, 8, 2), (64, 128, 4, 2), (64, 32, 4, 4)],
    # FlashAttention-2's Triton tutorial runs (32, 128, 4, 5) for dK/dV on H100. The 8-warp
    # tiles halve each thread's share of the dK/dV accumulators: sm_90 builds of the bf16
    # head_dim-64 kernel with dropout (ptxas 13.4 on the CPU) spill 348 bytes a thread at
    # (64, 64, 4, 2), the H200's pick, and 8 at (64, 64, 8, 2); (32, 64, 8, 2), (32, 128, 8, 2)
    # and (64, 32, 8, 2) do not spill.
    "bwd": [(32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 4, 3), (32, 128, 4, 5), (64, 64, 4, 2),
            (64, 128, 8, 3), (16, 64, 4, 2), (16, 32, 4, 2),
            (64, 64, 8, 2), (32, 64, 8, 2), (32, 128, 8, 2), (64, 32, 8, 2)],
    "bwd_det": [(32, 32, 4, 1), (32, 32, 4, 2), (64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 8, 2),
                (128, 128, 8, 1), (128, 128, 8, 2)],
}
KINDS = {"short": "equal-128", "long": "mixed-16-512"}  # length class -> the batch that tunes it
HEADS, TOKENS = 12, 16384
DTYPES = B.DTYPES


def time_direction(provider, inp, direction: str, device: str = "cuda") -> float:
    """ms of a graph replay of the forward (no dropout), or of forward + a backward
    (dropout 0.1, none for torch-varlen). Raises RuntimeError if the capture fails."""
    backward = direction != "fwd"
    if direction == "bwd_det":
        provider = "bertcore-triton-det" if provider == "bertcore-triton" else provider
    dropout_p = 0.1 if backward and provider != "torch-varlen" else 0.0
    fn, leaves = provider_fn(provider, inp, None, dropout_p=dropout_p)
    mode = "full" if backward else "fwd"
    timed, failed = B.replayed(mode_fn(fn, leaves, mode), f"{provider} {mode}")
    if failed:
        raise RuntimeError(f"capture failed: {failed}")
    return B.time_fn(timed, device)["ms"]


def sweep(dtype, head_dim, direction, length, inp):
    """{config: ms or 'failed: ...'} for one length class, and today's default."""
    default = tuple(K.launch_config(dtype, head_dim, direction, length))[:4]  # the tiles, not dropout_mask
    results = {}
    for cfg in CANDIDATES[direction]:
        try:
            with K.override_launch_configs({(dtype, head_dim, direction, length): cfg}):
                results[cfg] = time_direction("bertcore-triton", inp, direction)
        except Exception as exc:  # out of shared memory / registers on this chip
            results[cfg] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return default, results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp16"])
    ap.add_argument("--head-dims", nargs="+", type=int, default=[64, 128, 32])
    ap.add_argument("--directions", nargs="+", choices=list(CANDIDATES), default=["fwd", "bwd"])
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="the CSV goes to DIR/<device>/tune_attention-graphs.csv (default: benchmarks/results)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    rows, picks = [], {}
    env = B.env_row("cuda")
    out = B.results_dir("cuda", a.output) / "tune_attention-graphs.csv"   # older sweeps timed eager calls
    for dt in a.dtypes:
        refs = [p for p in ("sdpa-mask", "torch-varlen") if available(p, "cuda", dt) is None]
        for hd in a.head_dims:
            inputs = {cls: make_inputs(lengths_for(kind, TOKENS), HEADS, hd, DTYPES[dt], "cuda")
                      for cls, kind in KINDS.items()}
            for direction in a.directions:
                for cls, inp in inputs.items():
                    default, results = sweep(DTYPES[dt], hd, direction, cls, inp)
                    ref_ms = {p: time_direction(p, inp, direction) for p in refs}
                    ok = {c: t for c, t in results.items() if not isinstance(t, str)}
                    best = min(ok, key=ok.get) if ok else None
                    picks[(dt, hd, direction, cls)] = best
                    for cfg, t in results.items():
                        rows.append({**env, "dtype": dt, "head_dim": hd, "direction": direction,
                                     "length_class": cls, "lengths": KINDS[cls],
                                     "timed": "fwd" if direction == "fwd" else f"fwd + {direction}",
                                     "config": "x".join(map(str, cfg)), "default": cfg == default,
                                     "best": cfg == best,
                                     **({"ms": t} if not isinstance(t, str) else {"error": t}),
                                     **{f"{p}_ms": ms for p, ms in ref_ms.items()}})
                    B.print_table([r for r in rows if r["dtype"] == dt and r["head_dim"] == hd
                                   and r["direction"] == direction and r["length_class"] == cls],
                                  ["config", "default", "best", "ms", *(f"{p}_ms" for p in refs), "error"],
                                  title=f"attention {direction} {dt} d={hd} {cls} ({KINDS[cls]}, {HEADS} heads, "
                                        f"~{TOKENS} tokens; graph replays"
                                        f"{'' if direction == 'fwd' else ' with the forward'})")
                    # after every sweep: a run cut short by a time limit keeps what it timed
                    B.write_csv(rows, out)
                    print(f"best (block rows, block cols, warps, stages), as a _DEFAULTS row:\n"
                          f"    (({DTYPES[dt]},), ({hd},), {direction!r}, ({cls!r},), {best}),", flush=True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
