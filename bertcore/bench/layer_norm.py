"""LayerNorm and bias+GELU benchmarks: LN(dropout(x) + residual), BERT's post-LN
sub-layer tail, and GELU(x + bias), the feed-forward's first activation.

LayerNorm sweeps hidden sizes 384/768/1024, token counts, dropout 0 and 0.1, dtypes
(fp32 on CPU; fp16/bf16/fp32 on GPU) and modes (fwd, bwd, full = fwd+bwd). Providers:

  bertcore-triton  bertcore_kernels.layer_norm(backend="triton"): one fused pass (GPU only)
  bertcore-torch   bertcore_kernels.layer_norm(backend="torch"): dropout, add, F.layer_norm
  torch-ln-only    F.layer_norm on an already-summed input: the bound for the LN alone
  eager            dropout, add, mean/var/normalize written out in PyTorch ops
  copy             fwd only: one `copy_` of the fused forward's bytes (1.5·T·H elements
                   read and written), what memory gives at this size with its launch and
                   tail: the ceiling to hold a small call to, where the machine's copy
                   bandwidth (measured on 1 GiB) is out of reach

GB/s counts the bytes a fused kernel must move: fwd reads x and residual and writes
the output (3·T·H elements); bwd reads dy and the saved input and writes dx (3·T·H;
d(residual) is the same tensor); full is the sum. Weight/bias traffic is ignored.
`frac_of_peak` is the fraction of this machine's copy bandwidth, measured in-process;
`speedup_vs_torch` (bertcore-triton rows) is the bertcore-torch time over Triton's.

bias+GELU (width I = 4 x hidden, BERT's intermediate size) runs the same token counts,
dtypes and modes with providers bertcore-triton (`bertcore_kernels.bias_gelu`) and
torch (`F.gelu(x + b)`); bytes: fwd reads x, writes y (2·T·I); bwd reads dy and x,
writes dx (3·T·I).

The closing summary prints, per dtype, hidden and token count, the Triton LayerNorm
forward's % of copy bandwidth (p = 0), its fwd+bwd speed-up over the torch path at
each dropout, and the same for bias+GELU. `--tune` instead sweeps the kernels' launch
configurations (layer_norm.LAUNCH_CONFIGS, bias_gelu.LAUNCH_CONFIGS) on the GPU, of
the directions `--modes` names (fwd, bwd; default both), and prints the fastest as
table entries to paste. `--graphs` times CUDA-graph replays
instead of eager calls (`lib.replayed`): the kernels without the host's launch cost,
which bounds the 4k and 16k-token cases on a slow host; its files end in `-graphs`.
The bwd mode stays eager there: its backward belongs to a forward run before, on a
stream outside the capture, so capturing it fails (`full` times a graphed backward).

    bertcore bench kernels [--quick] [--threads N]          (LayerNorm only)
    python benchmarks/bench_layer_norm.py [--quick] [--threads N] [--hidden ...] [--ops ...] [--tune] [--help]
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch
import torch.nn.functional as F

from . import lib as B
from .attention import available, mode_fn

PROVIDERS = ("bertcore-triton", "bertcore-torch", "torch-ln-only", "eager", "copy")
GELU_PROVIDERS = ("bertcore-triton", "torch")
MODES = ("fwd", "bwd", "full")
BYTES_FACTOR = {"fwd": 3, "bwd": 3, "full": 6}
GELU_BYTES_FACTOR = {"fwd": 2, "bwd": 3, "full": 5}
OPS = ("layer_norm", "bias_gelu")
EPS = 1e-12


def provider_fn(provider, x, res, w, b, p):
    import bertcore_kernels as K
    if provider.startswith("bertcore"):
        backend = provider.split("-")[1]

        def fn(x, res):
            return K.layer_norm(x, w, b, EPS, residual=res, dropout_p=p, backend=backend)
        return fn, [x, res]
    if provider == "torch-ln-only":
        s = (x + res).detach().requires_grad_()

        def fn(s):
            return F.layer_norm(s, s.shape[-1:], w, b, EPS)
        return fn, [s]
    if provider == "copy":
        src = torch.cat([x.detach(), res.detach()[: len(res) // 2]])   # (1.5·T, H)
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), []
    if provider == "eager":
        def fn(x, res):
            h = F.dropout(x, p, training=p > 0) + res
            mean = h.mean(-1, keepdim=True)
            var = (h - mean).square().mean(-1, keepdim=True)
            return (h - mean) * torch.rsqrt(var + EPS) * w + b
        return fn, [x, res]
    raise ValueError(provider)


def gelu_provider_fn(provider, x, b):
    import bertcore_kernels as K
    if provider == "bertcore-triton":
        return (lambda x, b: K.bias_gelu(x, b, backend="triton")), [x, b]
    if provider == "torch":
        return (lambda x, b: F.gelu(x + b)), [x, b]
    raise ValueError(provider)


def _add_speedups(rows, keys, baseline):
    """speedup_vs_torch on the bertcore-triton rows: the baseline provider's ms over Triton's."""
    base = {tuple(r[k] for k in keys): r["ms"] for r in rows if r["provider"] == baseline}
    for r in rows:
        t = base.get(tuple(r[k] for k in keys))
        if r["provider"] == "bertcore-triton" and t:
            r["speedup_vs_torch"] = t / r["ms"]


def run(quick=False, device=None, threads=None, hiddens=None, token_counts=None, dropouts=None,
        dtypes=None, modes=None, providers=None, out_dir=None, write=True, verbose=True,
        graphs=False) -> list[dict]:
    """Runs the LayerNorm sweep; returns one row per measurement. Writes CSV/PNG into
    `out_dir` (default `lib.results_dir(device)`) unless `write` is False."""
    device = B.pick_device(device)
    if device == "cpu":
        B.set_threads(threads)
    cuda = device == "cuda"
    hiddens = hiddens or ([384, 768] if quick else [384, 768, 1024])
    token_counts = token_counts or _default_tokens(quick, cuda)
    dropouts = dropouts if dropouts is not None else ([0.1] if quick else [0.0, 0.1])
    dtypes = dtypes or (["fp16", "bf16", "fp32"] if cuda else ["fp32"])
    modes = modes or (["fwd", "full"] if quick else list(MODES))
    providers = providers or list(PROVIDERS)
    peaks = B.machine_peaks(device, quick)
    env = B.env_row(device)
    rows, notes = [], [f"{p}: {available(p, device)}" for p in providers if available(p, device)]
    for dt in dtypes:
        dtype = B.DTYPES[dt]
        for hidden in hiddens:
            for tokens in token_counts:
                g = torch.Generator(device).manual_seed(0)  # drawn where they are used
                x0 = torch.randn(tokens, hidden, generator=g, device=device, dtype=dtype)
                r0 = torch.randn(tokens, hidden, generator=g, device=device, dtype=dtype)
                w = torch.randn(hidden, generator=g, device=device, dtype=dtype).requires_grad_()
                b = torch.randn(hidden, generator=g, device=device, dtype=dtype).requires_grad_()
                for p in dropouts:
                    for mode in modes:
                        for prov in providers:
                            if available(prov, device) or (prov == "copy" and (mode, p) != ("fwd", dropouts[0])):
                                continue
                            x, res = x0.clone().requires_grad_(), r0.clone().requires_grad_()
                            fn, leaves = provider_fn(prov, x, res, w, b, p)
                            rows.append({**env, "dtype": dt, "hidden": hidden, "tokens": tokens, "dropout": p,
                                         "mode": mode, "provider": prov,
                                         **_measure(mode_fn(fn, leaves, mode), device, quick, peaks,
                                                    BYTES_FACTOR[mode] * tokens * hidden * x0.element_size(),
                                                    graphs and mode != "bwd")})
                        _add_speedups(rows, ("dtype", "hidden", "tokens", "dropout", "mode"), "bertcore-torch")
                        if verbose:
                            B.print_table([r for r in rows if (r["dtype"], r["hidden"], r["tokens"], r["dropout"],
                                                               r["mode"]) == (dt, hidden, tokens, p, mode)],
                                          TABLE_COLS, title=f"layer_norm {dt} H={hidden} T={tokens} p={p} {mode}")
    if verbose:
        print(f"\nmachine peaks ({env['device']}): " + ", ".join(f"{k}={v:.3g}" for k, v in peaks.items()))
        for n in notes:
            print("note:", n)
    if write and rows:
        out_dir = out_dir or B.results_dir(device)
        name = ("layer_norm-quick" if quick else "layer_norm") + ("-graphs" if graphs else "")
        B.write_sweep(rows, out_dir, name, lambda r: f"{r['dtype']} H={r['hidden']} p={r['dropout']}",
                      verbose=verbose, title="layer_norm {mode}: GB/s", x="tokens", y="gbps", series="provider")
    return rows


def run_bias_gelu(quick=False, device=None, threads=None, widths=None, token_counts=None, dtypes=None,
                  modes=None, providers=None, out_dir=None, write=True, verbose=True,
                  graphs=False) -> list[dict]:
    """The bias+GELU sweep (widths: BERT's intermediate sizes, 4 x hidden); one row per
    measurement; writes bias_gelu[-quick].csv/PNG unless `write` is False."""
    device = B.pick_device(device)
    if device == "cpu":
        B.set_threads(threads)
    cuda = device == "cuda"
    widths = widths or ([1536, 3072] if quick else [1536, 3072, 4096])
    token_counts = token_counts or _default_tokens(quick, cuda)
    dtypes = dtypes or (["fp16", "bf16", "fp32"] if cuda else ["fp32"])
    modes = modes or (["fwd", "full"] if quick else list(MODES))
    providers = providers or list(GELU_PROVIDERS)
    peaks = B.machine_peaks(device, quick)
    env = B.env_row(device)
    rows = []
    for dt in dtypes:
        dtype = B.DTYPES[dt]
        for width in widths:
            for tokens in token_counts:
                g = torch.Generator(device).manual_seed(0)  # drawn where they are used
                x0 = torch.randn(tokens, width, generator=g, device=device, dtype=dtype)
                b0 = torch.randn(width, generator=g, device=device, dtype=dtype)
                for mode in modes:
                    for prov in providers:
                        if available(prov, device):
                            continue
                        fn, leaves = gelu_provider_fn(prov, x0.clone().requires_grad_(), b0.clone().requires_grad_())
                        rows.append({**env, "dtype": dt, "width": width, "tokens": tokens, "mode": mode,
                                     "provider": prov,
                                     **_measure(mode_fn(fn, leaves, mode), device, quick, peaks,
                                                GELU_BYTES_FACTOR[mode] * tokens * width * x0.element_size(),
                                                graphs and mode != "bwd")})
                    _add_speedups(rows, ("dtype", "width", "tokens", "mode"), "torch")
                    if verbose:
                        B.print_table([r for r in rows if (r["dtype"], r["width"], r["tokens"], r["mode"])
                                       == (dt, width, tokens, mode)],
                                      TABLE_COLS, title=f"bias_gelu {dt} N={width} T={tokens} {mode}")
    if write and rows:
        out_dir = out_dir or B.results_dir(device)
        name = ("bias_gelu-quick" if quick else "bias_gelu") + ("-graphs" if graphs else "")
        B.write_sweep(rows, out_dir, name, lambda r: f"{r['dtype']} N={r['width']}",
                      verbose=verbose, title="bias_gelu {mode}: GB/s", x="tokens", y="gbps", series="provider")
    return rows


def _default_tokens(quick, cuda):
    return ([4096] if quick else [4096, 16384, 65536]) if cuda else ([1024] if quick else [1024, 4096, 16384])


def _measure(call, device, quick, peaks, nbytes, graphs=False):
    peak_mb = B.peak_memory(call, device) / 2 ** 20
    timed, failed = B.replayed(call, "kernel call") if graphs else (call, None)
    t = B.time_fn(timed, device, warmup=2, rep=5 if quick else 10, min_time=0.1 if quick else 0.3)
    gbps = nbytes / (t["ms"] * 1e-3) / 1e9
    timing = "eager" if not graphs else f"eager, capture failed: {failed}" if failed else "graph replay"
    return {"timing": timing, **t, "gbps": gbps, "frac_of_peak": gbps / peaks["copy_gbps"],
            "peak_mb": peak_mb, "machine_copy_gbps": peaks["copy_gbps"]}


TABLE_COLS = ["provider", "timing", "ms", "ms_p20", "ms_p80", "gbps", "frac_of_peak", "speedup_vs_torch",
              "peak_mb"]


def summary(ln_rows, gelu_rows) -> list[str]:
    """The numbers the kernels' targets are stated in (Triton rows only)."""
    lines = []

    def pick(rows, **kw):
        return next((r for r in rows if r["provider"] == "bertcore-triton"
                     and all(r[k] == v for k, v in kw.items())), None)

    for dt, hidden, tokens in dict.fromkeys((r["dtype"], r["hidden"], r["tokens"]) for r in ln_rows):
        parts = []
        fwd = pick(ln_rows, dtype=dt, hidden=hidden, tokens=tokens, dropout=0.0, mode="fwd")
        copy = next((r for r in ln_rows if r["provider"] == "copy" and (r["dtype"], r["hidden"], r["tokens"])
                     == (dt, hidden, tokens)), None)
        if fwd:
            parts.append(f"fwd p=0 at {100 * fwd['frac_of_peak']:.0f}% of copy bandwidth"
                         + (f" (a copy of its bytes: {100 * copy['frac_of_peak']:.0f}%)" if copy else ""))
        for p in sorted({r["dropout"] for r in ln_rows}):
            full = pick(ln_rows, dtype=dt, hidden=hidden, tokens=tokens, dropout=p, mode="full")
            if full and "speedup_vs_torch" in full:
                parts.append(f"fwd+bwd p={p:g} {full['speedup_vs_torch']:.2f}x torch (dropout, add, F.layer_norm)")
        if parts:
            lines.append(f"layer_norm {dt} H={hidden} T={tokens}: " + "; ".join(parts))
    for dt, width, tokens in dict.fromkeys((r["dtype"], r["width"], r["tokens"]) for r in gelu_rows):
        parts = []
        fwd = pick(gelu_rows, dtype=dt, width=width, tokens=tokens, mode="fwd")
        if fwd:
            parts.append(f"fwd at {100 * fwd['frac_of_peak']:.0f}% of copy bandwidth, "
                         f"{fwd.get('speedup_vs_torch', float('nan')):.2f}x torch")
        full = pick(gelu_rows, dtype=dt, width=width, tokens=tokens, mode="full")
        if full and "speedup_vs_torch" in full:
            parts.append(f"fwd+bwd {full['speedup_vs_torch']:.2f}x torch F.gelu(x + b)")
        if parts:
            lines.append(f"bias_gelu {dt} N={width} T={tokens}: " + "; ".join(parts))
    return lines


# ------------------------------------------------------------------------------ tuning
LN_TUNE = {"fwd": [(r, w) for r in (1, 2, 4, 8) for w in (2, 4, 8)],
           "bwd": [(r, w, s) for r in (1, 2, 4) for w in (4, 8) for s in (2, 3, 4, 6, 8, 16)]}
GELU_TUNE = {"fwd": [(m, n, w) for m, n in ((1, 1024), (2, 1024), (4, 512), (8, 512), (16, 256), (8, 1024))
                     for w in (4, 8)],
             "bwd": [(m, n, w, s) for m, n in ((4, 512), (8, 512), (16, 256), (8, 1024)) for w in (4, 8)
                     for s in (2, 4, 8)]}


def tune(device=None, hiddens=None, token_counts=None, dtypes=None, dropouts=None, ops=OPS, out_dir=None,
         write=True, verbose=True, graphs=None, directions=("fwd", "bwd")) -> list[dict]:
    """Times every launch config in LN_TUNE / GELU_TUNE for each dtype, hidden size
    (bias+GELU: width 4 x hidden) and direction, and prints the fastest (geometric mean
    over token counts and dropouts) as LAUNCH_CONFIGS entries. GPU only: the
    interpreter's times mean nothing. With `graphs` (default: on CUDA) each call is timed
    as a graph replay (`lib.replayed`: eager calls of these sizes are bound by the host's
    launches), and a backward candidate with its forward (a lone backward cannot be
    captured; the forward is the same for every candidate)."""
    import importlib
    ln = importlib.import_module("bertcore_kernels.layer_norm")
    bg = importlib.import_module("bertcore_kernels.bias_gelu")
    device = B.pick_device(device)
    if available("bertcore-triton", device):
        raise SystemExit(f"--tune needs a GPU: {available('bertcore-triton', device)}")
    graphs = device == "cuda" if graphs is None else graphs
    hiddens = hiddens or [768]
    token_counts = token_counts or [16384, 65536]
    dtypes = dtypes or ["bf16"]
    dropouts = dropouts if dropouts is not None else [0.0, 0.1]
    peaks = B.machine_peaks(device)
    env = B.env_row(device)
    rows, best = [], []
    for dt, hidden in itertools.product(dtypes, hiddens):
        dtype = B.DTYPES[dt]
        for op, direction in itertools.product(ops, directions):
            table = LN_TUNE if op == "layer_norm" else GELU_TUNE
            times = {}
            for cfg in table[direction]:
                for tokens, p in itertools.product(token_counts, dropouts if op == "layer_norm" else [0.0]):
                    g = torch.Generator(device).manual_seed(0)  # drawn where they are used

                    def randn(*shape):
                        return torch.randn(*shape, generator=g, device=device, dtype=dtype).requires_grad_()
                    timed = "full" if graphs and direction == "bwd" else direction
                    if op == "layer_norm":
                        x, res, w, b = randn(tokens, hidden), randn(tokens, hidden), randn(hidden), randn(hidden)
                        fn, leaves = provider_fn("bertcore-triton", x, res, w, b, p)
                        width, nbytes = hidden, BYTES_FACTOR[timed] * tokens * hidden * dtype.itemsize
                    else:
                        width = 4 * hidden
                        x, b = randn(tokens, width), randn(width)
                        fn, leaves = gelu_provider_fn("bertcore-triton", x, b)
                        nbytes = GELU_BYTES_FACTOR[timed] * tokens * width * dtype.itemsize
                    override = (ln.override_launch_configs({(dtype, hidden, direction): cfg}) if op == "layer_norm"
                                else bg.override_launch_configs({direction: cfg}))
                    with override:
                        call = mode_fn(fn, leaves, timed)
                        if graphs:
                            call, failed = B.replayed(call, f"{op} {direction} {cfg}")
                            if failed:
                                raise RuntimeError(f"{op} {direction} {cfg}: capture failed: {failed}")
                        t = B.time_fn(call, device)
                    gbps = nbytes / (t["ms"] * 1e-3) / 1e9
                    rows.append({**env, "op": op, "dtype": dt, "width": width, "tokens": tokens, "dropout": p,
                                 "mode": direction, "timed": timed, "config": "/".join(map(str, cfg)), **t,
                                 "gbps": gbps, "frac_of_peak": gbps / peaks["copy_gbps"]})
                    times.setdefault(cfg, []).append(t["ms"])
            score = {cfg: math.exp(sum(map(math.log, ts)) / len(ts)) for cfg, ts in times.items()}
            winner = min(score, key=score.get)
            now = (tuple(ln.launch_config(dtype, hidden, direction)) if op == "layer_norm"
                   else tuple(bg.LAUNCH_CONFIGS[direction]))
            now_score = score.get(tuple(now[:len(winner)]))
            key = (f"({dtype}, {ln._launch_key(dtype, hidden, direction)[1]}, \"{direction}\")"
                   if op == "layer_norm" else f"\"{direction}\"")
            shape = f"H={hidden}" if op == "layer_norm" else f"N={4 * hidden}"
            best.append(f"{op} {dt} {shape}: {key}: LaunchConfig{winner}  # {score[winner]:.4f} ms (geomean); "
                        f"current {now}: " + (f"{now_score:.4f} ms" if now_score else "not in the sweep"))
            if verbose:
                print(best[-1], flush=True)
    if write and rows:
        B.write_csv(rows, (out_dir or B.results_dir(device)) / "tune_layer_norm.csv")
    if verbose:
        print("\nfastest launch configs (paste into layer_norm.py / bias_gelu.py LAUNCH_CONFIGS):")
        for line in best:
            print(" ", line)
    return rows


def main(argv=None, default_output=None) -> int:
    """Command line of the sweeps; results go to <--output or default_output>/<device>/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=B.thread_count)
    ap.add_argument("--hidden", nargs="+", type=B.positive_int, help="LayerNorm hidden sizes; bias+GELU runs 4x each")
    ap.add_argument("--tokens", nargs="+", type=B.positive_int)
    ap.add_argument("--dropout", nargs="+", type=B.dropout_rate)
    ap.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--modes", nargs="+", choices=list(MODES))
    ap.add_argument("--providers", nargs="+", choices=list(PROVIDERS), help="LayerNorm providers")
    ap.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    ap.add_argument("--tune", action="store_true", help="sweep the launch configs instead (GPU)")
    ap.add_argument("--graphs", action="store_true", help="time CUDA-graph replays (GPU)")
    B.add_output_arguments(ap, default_output)
    a = ap.parse_args(argv)
    device = B.pick_device(a.device)
    if a.graphs and device != "cuda":
        ap.error("--graphs times CUDA-graph replays: it needs a CUDA device")
    out_dir = None if a.no_write else B.results_dir(device, a.output)
    if a.tune:
        directions = [m for m in a.modes or ("fwd", "bwd") if m in ("fwd", "bwd")]
        if not directions:
            ap.error("--tune sweeps the fwd and bwd launch configs: --modes fwd, bwd or both")
        tune(device, a.hidden, a.tokens, a.dtypes, a.dropout, a.ops, out_dir=out_dir, write=not a.no_write,
             directions=directions)
        return 0
    # each op's summary as soon as it is measured: a time limit on the whole run keeps the first
    if "layer_norm" in a.ops:
        ln_rows = run(a.quick, device, a.threads, a.hidden, a.tokens, a.dropout, a.dtypes, a.modes, a.providers,
                      out_dir=out_dir, write=not a.no_write, graphs=a.graphs)
        _print_summary(summary(ln_rows, []), "targets (issue 14): bf16 fwd p=0 >= 80% of copy bandwidth; "
                       "fwd+bwd p=0.1 >= 1.5x torch")
    if "bias_gelu" in a.ops:
        gelu_rows = run_bias_gelu(a.quick, device, a.threads, [4 * h for h in a.hidden] if a.hidden else None,
                                  a.tokens, a.dtypes, a.modes, out_dir=out_dir, write=not a.no_write,
                                  graphs=a.graphs)
        _print_summary(summary([], gelu_rows), "bias+GELU against torch's two passes")
    return 0


def _print_summary(lines, what):
    if lines:
        print(f"\nsummary ({what}):")
        for line in lines:
            print(" ", line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
