"""The torch backend's fast path for `attention`: one unmasked SDPA per run of
sequences of equal length, on zero-copy views of the packed q, k, v.

`attention` takes this path whenever the sequence lengths are on the host (CPU
`cu_seqlens`: reading them costs no device sync). A run of n sequences of length l
is a (n, heads, l, head_dim) view of the packed tokens, so no FLOP or byte goes to
padding and CPU SDPA keeps its fast unmasked kernels; a batch of equal lengths is a
single call. Planning the runs is O(batch) Python on offsets `attention` reads for
its checks anyway, a few microseconds per call.

For training on the CPU, `_DropoutAttention` replaces SDPA's math path (the only
CPU one with dropout), which keeps three fp32 L x L tensors per layer for the
backward; this one keeps the probabilities and a bool keep-mask.
"""
import torch
import torch.nn.functional as F

from .dropout import keep_mask


def equal_length_runs(offsets: list[int]) -> list[tuple[int, int]]:
    """[(n, l), ...]: sequences with these start offsets (cu_seqlens as a list) as runs
    of n consecutive sequences of equal length l. Equal lengths make one run."""
    runs: list[tuple[int, int]] = []
    for start, end in zip(offsets, offsets[1:]):
        length = end - start
        if runs and runs[-1][1] == length:
            runs[-1] = (runs[-1][0] + 1, length)
        else:
            runs.append((1, length))
    return runs


class _DropoutAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale) with dropout, then · v, for training on the CPU.

    Saves q, k, v as the views they are (no copy), the probabilities and a bool
    keep-mask (1.25 fp32 L x L tensors' worth), and recomputes the rest in the
    backward. Dropout draws from torch's global RNG (`keep_mask`)."""

    @staticmethod
    def forward(ctx, q, k, v, p, scale):                                       # (n, nh, l, hd) each
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).mul_(scale), -1)  # (n, nh, l, l)
        keep, c = keep_mask(probs.shape, p, probs.device)                      # (n, nh, l, l) bool
        out = torch.matmul((probs * keep).mul_(c), v)                          # (n, nh, l, hd)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.keep_scale, ctx.scale = c, scale
        return out

    @staticmethod
    def backward(ctx, dout):                                                   # (n, nh, l, hd)
        q, k, v, probs, keep = ctx.saved_tensors
        dtypes = (q.dtype, k.dtype, v.dtype)
        q, k, v, dout = (t.to(probs.dtype) for t in (q, k, v, dout))          # autocast: backward in fp32
        c = ctx.keep_scale
        dv = torch.matmul((probs * keep).mul_(c).transpose(-1, -2), dout)      # (n, nh, l, hd)
        dprobs = torch.matmul(dout, v.transpose(-1, -2)).mul_(keep).mul_(c)    # (n, nh, l, l)
        ds = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(ctx.scale)
        dq = torch.matmul(ds, k)                                               # (n, nh, l, hd)
        dk = torch.matmul(ds.transpose(-1, -2), q)                             # (n, nh, l, hd)
        return dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2]), None, None


def attention_runs(q, k, v, runs, dropout_p=0.0, softmax_scale=None):
    """Attention of packed sequences, run by run; differentiable.

    q, k, v: (T, heads, head_dim), strided views allowed (slices of a fused QKV);
    runs: from `equal_length_runs`. Returns (T, heads, head_dim), contiguous.
    `split`'s backward is a single concatenation.
    """
    total, heads, head_dim = q.shape
    sizes = [n * l for n, l in runs]
    chunks = zip(*(t.split(sizes) for t in (q, k, v))) if len(runs) > 1 else [(q, k, v)]
    outs = []
    for (qc, kc, vc), (n, l) in zip(chunks, runs):
        if n * l == 0:
            continue                                                           # empty sequences: no tokens
        qr, kr, vr = (t.view(n, l, heads, head_dim).transpose(1, 2) for t in (qc, kc, vc))  # (n, nh, l, hd)
        if dropout_p > 0.0 and torch.is_grad_enabled():
            scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
            o = _DropoutAttention.apply(qr, kr, vr, dropout_p, scale)          # (n, nh, l, hd)
        else:
            o = F.scaled_dot_product_attention(qr, kr, vr, dropout_p=dropout_p,
                                               scale=softmax_scale)            # (n, nh, l, hd)
        outs.append(o.transpose(1, 2).reshape(n * l, heads, head_dim))         # (n*l, nh, hd)
    if not outs:
        # No tokens at all: an empty result, still connected to q, k, v so backward() runs.
        return (q + k + v)[:0]                                                 # (0, nh, hd)
    return outs[0] if len(outs) == 1 else torch.cat(outs)                      # (T, nh, hd)
