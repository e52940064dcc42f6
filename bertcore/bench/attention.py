"""Attention benchmark: packed varlen attention against padded PyTorch attention.

Sweeps sequence lengths (equal batches 64..512 and mixed-length batches), head dims
32/64/128 (12 heads), dtypes (fp32 on CPU; fp16/bf16/fp32 on GPU) and modes
(fwd, bwd, full = fwd+bwd). Providers:

  bertcore-triton  bertcore_kernels.attention(backend="triton"): the Triton kernels (GPU only;
                   on a CPU Triton only has its interpreter, which is no performance path)
  bertcore-triton-det  the same with deterministic=True: the two-pass backward without atomics
  bertcore-triton-saved  bertcore-triton with the forward's `dropout_mask` "saved": the
                   forward draws dropout's keep-mask and saves it as bits, the backward reads
                   them instead of drawing it again (the same results, timed to choose)
  bertcore-triton-prebuilt  the same with "prebuilt": a kernel of its own draws the bits
                   before the forward, and both directions read them
  bertcore-triton-redraw  the same with "redraw": the forward draws the mask, the backward
                   draws it again (the default up to 128 keys; "prebuilt" past them)
  torch-varlen     torch.nn.attention.varlen.varlen_attn: PyTorch's packed FlashAttention (CUDA,
                   fp16/bf16, no dropout; where the installed torch has it)
  bertcore-repad   bertcore_kernels.attention_ref: repad + masked SDPA + unpad (what the torch
                   backend does when cu_seqlens is on a GPU)
  bertcore-runs    bertcore_kernels.attention(backend="torch") with cu_seqlens on the host: the
                   encoder's CPU path (one unmasked SDPA per run of equal-length sequences on
                   views of the packed qkv)
  sdpa-mask        F.scaled_dot_product_attention on the padded batch with a bool key mask
  sdpa-nomask      the same without a mask (attends to padding: a speed bound, not a result)
  eager            padded matmul, masked softmax, matmul (what BERT's eager attention does)

`--dropout P` drops attention probabilities in every provider that can (torch-varlen
cannot and is left out). `--graphs` times CUDA-graph replays of each call instead of
eager calls (`lib.replayed`): the kernels without the host's launch cost, which at
16k tokens is most of an eager call's time on a slow host. The bwd mode stays eager
there: its backward belongs to a forward run before, on a stream outside the capture,
so capturing it fails (`full` times a graphed backward).

Each batch holds about `tokens` real tokens. TFLOP/s counts real tokens only
(fwd 4·h·d·Σl², bwd 2.5× that, full 3.5×), so padding is wasted time, not credit.
The fraction is of this machine's fp32 (or fp16) matmul peak measured in-process.

    bertcore bench kernels [--quick] [--threads N]
    python benchmarks/bench_attention.py [--quick] [--threads N] [--lengths ...] [--help]
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from . import lib as B

PROVIDERS = ("bertcore-triton", "bertcore-triton-det", "bertcore-triton-saved", "bertcore-triton-prebuilt",
             "bertcore-triton-redraw", "torch-varlen", "bertcore-repad", "bertcore-runs", "sdpa-mask", "sdpa-nomask",
             "eager")
MODES = ("fwd", "bwd", "full")
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "full": 3.5}


def lengths_for(kind: str, tokens: int, seed: int = 0) -> list[int]:
    """'equal-L' or 'mixed-LO-HI' → the batch's sequence lengths (about `tokens` in all)."""
    parts = kind.split("-")
    if parts[0] == "equal":
        L = int(parts[1])
        return [L] * max(1, tokens // L)
    lo, hi = int(parts[1]), int(parts[2])
    return B.mixed_lengths(max(1, round(tokens / ((lo + hi) / 2))), lo, hi, seed)


def make_inputs(lengths, heads, head_dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    total, batch, L = sum(lengths), len(lengths), max(lengths)
    qkv = torch.randn(total, 3, heads, head_dim, generator=g).to(device=device, dtype=dtype)
    cu = torch.tensor([0] + lengths).cumsum(0).to(device=device, dtype=torch.int32)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).to(device)          # (B, L)
    idx = mask.flatten().nonzero().flatten()
    padded = qkv.new_zeros(batch * L, 3, heads, head_dim).index_copy(0, idx, qkv)
    padded = padded.view(batch, L, 3, heads, head_dim).permute(2, 0, 3, 1, 4).contiguous()  # (3, B, h, L, d)
    return {"qkv": qkv, "cu": cu, "max": L, "padded": padded, "mask": mask}


def provider_fn(provider, inp, lengths, dropout_p=0.0):
    """A function of (q, k, v) leaves → output, plus those leaves, for one provider;
    `dropout_p` on the attention probabilities (training), as each provider does it."""
    import bertcore_kernels as K
    if provider.startswith("bertcore-triton"):
        leaves = [t.clone().requires_grad_() for t in inp["qkv"].unbind(1)]          # (T, h, d) each
        deterministic = provider == "bertcore-triton-det"
        configs = {}
        if provider in ("bertcore-triton-saved", "bertcore-triton-prebuilt", "bertcore-triton-redraw"):
            configs = K.dropout_mask_configs(provider.rsplit("-", 1)[1])

        def fn(q, k, v):
            # The backward reads the forward's choice from what the forward saved.
            with K.override_launch_configs(configs):
                return K.attention(q, k, v, inp["cu"], inp["max"], dropout_p=dropout_p, backend="triton",
                                   deterministic=deterministic)
        return fn, leaves
    if provider == "torch-varlen":
        if dropout_p:
            raise ValueError("torch-varlen has no dropout")
        varlen_attn = _varlen_attn()
        leaves = [t.clone().requires_grad_() for t in inp["qkv"].unbind(1)]          # (T, h, d) each

        def fn(q, k, v):
            return varlen_attn(q, k, v, inp["cu"], inp["cu"], inp["max"], inp["max"])
        return fn, leaves
    if provider == "bertcore-repad":
        leaves = [t.clone().requires_grad_() for t in inp["qkv"].unbind(1)]          # (T, h, d) each

        def fn(q, k, v):
            return K.attention_ref(q, k, v, inp["cu"], inp["max"], dropout_p=dropout_p)
        return fn, leaves
    if provider == "bertcore-runs":
        cu_host = inp["cu"].cpu()  # lengths on the host: the torch backend runs per run of equal lengths
        leaves = [inp["qkv"].clone().requires_grad_()]                                 # (T, 3, h, d)

        def fn(qkv):
            return K.attention(*qkv.unbind(1), cu_host, inp["max"], dropout_p=dropout_p, backend="torch")
        return fn, leaves
    leaves = [t.clone().requires_grad_() for t in inp["padded"].unbind(0)]          # (B, h, L, d) each
    keymask = inp["mask"][:, None, None, :]                                          # (B, 1, 1, L)
    if provider == "sdpa-mask":
        def fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keymask, dropout_p=dropout_p)
    elif provider == "sdpa-nomask":
        def fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    elif provider == "eager":
        scale = 1.0 / math.sqrt(leaves[0].shape[-1])

        def fn(q, k, v):
            s = (q @ k.transpose(-1, -2)) * scale
            return F.dropout(s.masked_fill(~keymask, float("-inf")).softmax(-1), dropout_p, dropout_p > 0) @ v
    else:
        raise ValueError(provider)
    return fn, leaves


def mode_fn(fn, leaves, mode):
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(*leaves)
        return call
    if mode == "full":
        def call():
            out = fn(*leaves)
            out.backward(torch.ones_like(out))
            for t in leaves:
                t.grad = None
        return call
    out = fn(*leaves)
    dout = torch.randn_like(out)

    def call():
        out.backward(dout, retain_graph=True)
        for t in leaves:
            t.grad = None
    return call


def _varlen_attn():
    """torch.nn.attention.varlen.varlen_attn, or None where this torch lacks it (< 2.9)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def available(provider: str, device: str, dtype: str | None = None, dropout_p: float = 0.0) -> str | None:
    """None if the provider runs here (for `dtype`, "fp16"/"bf16"/"fp32", if given, and
    with `dropout_p`), else why not."""
    if provider.startswith("bertcore-triton"):
        if device != "cuda":
            return "skipped: no CUDA device (Triton's CPU interpreter is not a performance path)"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "skipped: triton not installed"
    if provider == "torch-varlen":
        if _varlen_attn() is None:
            return f"skipped: torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
        if device != "cuda":
            return "skipped: varlen_attn runs FlashAttention on CUDA only"
        if dtype == "fp32":
            return "skipped for fp32: FlashAttention runs fp16/bf16 only"
        if dropout_p:
            return "skipped with dropout: varlen_attn has none"
    return None


def run(quick=False, device=None, threads=None, kinds=None, head_dims=None, dtypes=None, modes=None,
        providers=None, tokens=None, out_dir=None, write=True, verbose=True, dropout_p=0.0,
        graphs=False, name=None) -> list[dict]:
    """Runs the sweep; returns one row per measurement. Writes CSV/PNG into `out_dir`
    (default `lib.results_dir(device)`) as `name` (default "attention") unless `write`
    is False. `dropout_p` and `graphs`: see the module docstring."""
    device = B.pick_device(device)
    if graphs and device != "cuda":
        raise ValueError("--graphs times CUDA-graph replays: it needs a CUDA device")
    if device == "cpu":
        B.set_threads(threads)
    cuda = device == "cuda"
    kinds = kinds or (["equal-128", "mixed-16-128"] if quick else
                      ["equal-64", "equal-128", "equal-256", "equal-512", "mixed-16-128", "mixed-16-512"])
    head_dims = head_dims or ([64] if quick else [32, 64, 128])
    dtypes = dtypes or (["fp16", "bf16", "fp32"] if cuda else ["fp32"])
    modes = modes or (["fwd", "full"] if quick else list(MODES))
    providers = providers or list(PROVIDERS)
    tokens = tokens or ((4096 if quick else 16384) if cuda else (512 if quick else 2048))
    heads = 12
    peaks = B.machine_peaks(device, quick)
    env = B.env_row(device)
    notes, rows = [], []
    for p in providers:
        why = available(p, device, dropout_p=dropout_p) or next(
            (available(p, device, dt) for dt in dtypes if available(p, device, dt)), None)
        if why:
            notes.append(f"{p}: {why}")
    for dt in dtypes:
        dtype = B.DTYPES[dt]
        for hd in head_dims:
            for kind in kinds:
                lengths = lengths_for(kind, tokens)
                inp = make_inputs(lengths, heads, hd, dtype, device)
                flops_fwd = 4 * heads * hd * sum(n * n for n in lengths)
                for mode in modes:
                    for p in providers:
                        if available(p, device, dt, dropout_p):
                            continue
                        fn, leaves = provider_fn(p, inp, lengths, dropout_p)
                        call = mode_fn(fn, leaves, mode)
                        peak = B.peak_memory(call, device)
                        graphed = graphs and mode != "bwd"
                        timed, failed = B.replayed(call, f"{p} {mode}") if graphed else (call, None)
                        t = B.time_fn(timed, device, warmup=2, rep=3 if quick else 5, min_time=0.1 if quick else 0.3)
                        tflops = flops_fwd * FLOP_FACTOR[mode] / (t["ms"] * 1e-3) / 1e12
                        rows.append({**env, "dtype": dt, "head_dim": hd, "heads": heads, "lengths": kind,
                                     "batch": len(lengths), "real_tokens": sum(lengths),
                                     "padded_tokens": len(lengths) * max(lengths), "mode": mode,
                                     "provider": p, "dropout_p": dropout_p,
                                     "timing": "eager" if not graphed else f"eager, capture failed: {failed}"
                                     if failed else "graph replay", **t, "tflops": tflops,
                                     "frac_of_peak": tflops / B.peak_flops(device, dtype),
                                     "peak_mb": peak / 2 ** 20,
                                     "machine_matmul_tflops": B.peak_flops(device, dtype)})
                    if verbose:
                        these = [r for r in rows if r["lengths"] == kind and r["mode"] == mode
                                 and r["head_dim"] == hd and r["dtype"] == dt]
                        B.print_table(these, TABLE_COLS, title=f"attention {dt} d={hd} {kind} {mode}"
                                      f" dropout={dropout_p:g}{' graphs' if graphs else ''}")
                        sdpa_target = SDPA_TARGETS.get(kind) if dropout_p else None   # stated with dropout
                        for ours in ("bertcore-triton", "bertcore-triton-redraw", "bertcore-triton-saved",
                                     "bertcore-triton-prebuilt"):
                            for peer, target in (("torch-varlen", 0.9), ("sdpa-mask", sdpa_target)):
                                ratio = speed_vs(these, peer, ours)
                                if ratio is not None:
                                    print(f"{ours} speed / {peer} speed: {ratio:.2f}"
                                          + (f" (target >= {target})" if target else ""))
    if verbose:
        print(f"\nmachine peaks ({env['device']}): " + ", ".join(f"{k}={v:.3g}" for k, v in peaks.items()))
        for n in notes:
            print("note:", n)
    if write and rows:
        out_dir = out_dir or B.results_dir(device)
        name = name or ("attention-quick" if quick else "attention")
        B.write_sweep(rows, out_dir, name, lambda r: f"{r['dtype']} d={r['head_dim']}", verbose=verbose,
                      title="attention {mode}: TFLOP/s on real tokens", x="lengths", y="tflops", series="provider")
    return rows


# Issue 14's targets for fwd+bwd with dropout 0.1 against SDPA with a key mask (what
# transformers runs), by batch kind; against torch-varlen (no dropout) 0.9 everywhere.
SDPA_TARGETS = {"equal-128": 1.0, "mixed-16-128": 1.5, "equal-512": 1.2, "mixed-16-512": 2.5}


def speed_vs(rows, peer: str, ours: str = "bertcore-triton") -> float | None:
    """`peer`'s time over `ours`' among `rows` of one case (> 1: bertcore is faster), or
    None without both."""
    ms = {r["provider"]: r["ms"] for r in rows}
    if ours in ms and peer in ms:
        return ms[peer] / ms[ours]
    return None


TABLE_COLS = ["provider", "timing", "ms", "ms_p20", "ms_p80", "tflops", "frac_of_peak", "peak_mb"]


def main(argv=None, default_output=None) -> int:
    """Command line of the sweep; results go to <--output or default_output>/<device>/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=B.thread_count)
    ap.add_argument("--lengths", nargs="+", type=B.length_class,
                    help="equal-L or mixed-LO-HI, e.g. equal-128 mixed-16-512")
    ap.add_argument("--head-dims", nargs="+", type=B.positive_int)
    ap.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--modes", nargs="+", choices=list(MODES))
    ap.add_argument("--providers", nargs="+", choices=list(PROVIDERS))
    ap.add_argument("--tokens", type=B.positive_int, help="real tokens per batch")
    ap.add_argument("--dropout", type=B.dropout_rate, default=0.0, help="dropout on the attention probabilities")
    ap.add_argument("--graphs", action="store_true", help="time CUDA-graph replays (GPU)")
    ap.add_argument("--name", help="CSV/PNG name (default attention)")
    B.add_output_arguments(ap, default_output)
    a = ap.parse_args(argv)
    device = B.pick_device(a.device)
    if not 0.0 <= a.dropout < 1.0:
        ap.error(f"--dropout must be in [0, 1), got {a.dropout}")
    if a.graphs and device != "cuda":
        ap.error("--graphs times CUDA-graph replays: it needs a CUDA device")
    run(a.quick, device, a.threads, a.lengths, a.head_dims, a.dtypes, a.modes, a.providers, a.tokens,
        out_dir=None if a.no_write else B.results_dir(device, a.output), write=not a.no_write,
        dropout_p=a.dropout, graphs=a.graphs, name=a.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
