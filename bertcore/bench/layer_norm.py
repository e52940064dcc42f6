"""LayerNorm benchmark: LN(dropout(x) + residual), BERT's post-LN sub-layer tail.

Sweeps hidden sizes 384/768/1024, token counts, dropout 0 and 0.1, dtypes (fp32 on
CPU; fp16/bf16/fp32 on GPU) and modes (fwd, bwd, full). Providers:

  bertcore-triton  bertcore_kernels.layer_norm(backend="triton"): one fused pass (GPU only)
  bertcore-torch   bertcore_kernels.layer_norm(backend="torch"): dropout, add, F.layer_norm
  torch-ln-only    F.layer_norm on an already-summed input: the bound for the LN alone
  eager            dropout, add, mean/var/normalize written out in PyTorch ops

GB/s counts the bytes a fused kernel must move: fwd reads x and residual and writes
the output (3·T·H elements); bwd reads dy and the saved input and writes dx (3·T·H;
d(residual) is the same tensor); full is the sum. Weight/bias traffic is ignored. The
fraction is of this machine's copy bandwidth measured in-process.

    bertcore bench kernels [--quick] [--threads N]
    python benchmarks/bench_layer_norm.py [--quick] [--threads N] [--hidden ...] [--help]
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from . import lib as B
from .attention import available, mode_fn

PROVIDERS = ("bertcore-triton", "bertcore-torch", "torch-ln-only", "eager")
MODES = ("fwd", "bwd", "full")
BYTES_FACTOR = {"fwd": 3, "bwd": 3, "full": 6}
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
    if provider == "eager":
        def fn(x, res):
            h = F.dropout(x, p, training=p > 0) + res
            mean = h.mean(-1, keepdim=True)
            var = (h - mean).square().mean(-1, keepdim=True)
            return (h - mean) * torch.rsqrt(var + EPS) * w + b
        return fn, [x, res]
    raise ValueError(provider)


def run(quick=False, device=None, threads=None, hiddens=None, token_counts=None, dropouts=None,
        dtypes=None, modes=None, providers=None, out_dir=None, write=True, verbose=True) -> list[dict]:
    """Runs the sweep; returns one row per measurement. Writes CSV/PNG into `out_dir`
    (default `lib.results_dir(device)`) unless `write` is False."""
    device = B.pick_device(device)
    if device == "cpu":
        B.set_threads(threads)
    cuda = device == "cuda"
    hiddens = hiddens or ([384, 768] if quick else [384, 768, 1024])
    token_counts = token_counts or (([4096] if quick else [4096, 16384, 65536]) if cuda else
                                    ([1024] if quick else [1024, 4096, 16384]))
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
                g = torch.Generator().manual_seed(0)
                x0 = torch.randn(tokens, hidden, generator=g).to(device, dtype)
                r0 = torch.randn(tokens, hidden, generator=g).to(device, dtype)
                w = torch.randn(hidden, generator=g).to(device, dtype).requires_grad_()
                b = torch.randn(hidden, generator=g).to(device, dtype).requires_grad_()
                for p in dropouts:
                    for mode in modes:
                        for prov in providers:
                            if available(prov, device):
                                continue
                            x, res = x0.clone().requires_grad_(), r0.clone().requires_grad_()
                            fn, leaves = provider_fn(prov, x, res, w, b, p)
                            call = mode_fn(fn, leaves, mode)
                            t = B.time_fn(call, device, warmup=2, rep=5 if quick else 10,
                                          min_time=0.1 if quick else 0.3)
                            peak = B.peak_memory(call, device)
                            nbytes = BYTES_FACTOR[mode] * tokens * hidden * x0.element_size()
                            gbps = nbytes / (t["ms"] * 1e-3) / 1e9
                            rows.append({**env, "dtype": dt, "hidden": hidden, "tokens": tokens,
                                         "dropout": p, "mode": mode, "provider": prov, **t,
                                         "gbps": gbps, "frac_of_peak": gbps / peaks["copy_gbps"],
                                         "peak_mb": peak / 2 ** 20,
                                         "machine_copy_gbps": peaks["copy_gbps"]})
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
        name = "layer_norm-quick" if quick else "layer_norm"
        B.write_sweep(rows, out_dir, name, lambda r: f"{r['dtype']} H={r['hidden']} p={r['dropout']}",
                      verbose=verbose, title="layer_norm {mode}: GB/s", x="tokens", y="gbps", series="provider")
    return rows


TABLE_COLS = ["provider", "ms", "ms_p20", "ms_p80", "gbps", "frac_of_peak", "peak_mb"]


def main(argv=None, default_output=None) -> int:
    """Command line of the sweep; results go to <--output or default_output>/<device>/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--hidden", nargs="+", type=int)
    ap.add_argument("--tokens", nargs="+", type=int)
    ap.add_argument("--dropout", nargs="+", type=float)
    ap.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--modes", nargs="+", choices=list(MODES))
    ap.add_argument("--providers", nargs="+", choices=list(PROVIDERS))
    B.add_output_arguments(ap, default_output)
    a = ap.parse_args(argv)
    device = B.pick_device(a.device)
    run(a.quick, device, a.threads, a.hidden, a.tokens, a.dropout, a.dtypes, a.modes, a.providers,
        out_dir=None if a.no_write else B.results_dir(device, a.output), write=not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
