"""Attention over packed (unpadded) sequences.

Layout: q, k, v are (total_tokens, heads, head_dim), the tokens of all sequences
back to back; `cu_seqlens` (B+1,) int32 holds each sequence's start offset and
`max_seqlen` the longest length as a Python int (known on the host, no sync).
Attention is non-causal and never crosses a sequence boundary.

The file reads: the PyTorch reference (also the fast CPU path), then the public
function. The Triton kernels live beside it and plug in behind `attention`.
"""
import math

import torch
import torch.nn.functional as F

from .dispatch import resolve


def _pad_index(cu_seqlens: torch.Tensor, max_seqlen: int, total: int):
    """Where each packed token sits in a (B * max_seqlen) padded layout, and the key mask."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]                                    # (B,)
    batch = lens.numel()
    starts = cu_seqlens[:-1].long()
    seq_of_token = torch.repeat_interleave(
        torch.arange(batch, device=cu_seqlens.device), lens, output_size=total)  # (T,)
    pos = torch.arange(total, device=cu_seqlens.device) - starts[seq_of_token]   # (T,)
    flat = seq_of_token * max_seqlen + pos                                     # (T,)
    key_mask = torch.arange(max_seqlen, device=cu_seqlens.device) < lens[:, None]  # (B, L)
    # A zero-length sequence has no key to attend to; give its (discarded) padding
    # rows one key so softmax stays finite and no NaN leaks into the backward.
    key_mask[:, 0] |= lens == 0
    return flat, key_mask


def attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                  dropout_mask=None, upcast=False):
    """Plain PyTorch attention on the packed layout; differentiable.

    Repads to the batch's own max length (never to 512), runs
    `scaled_dot_product_attention` with a boolean key mask, and unpads.
    `dropout_mask` (B, heads, max_seqlen, max_seqlen) bool, True = keep: apply this
    exact mask (scaled by 1/(1-p)) instead of drawing one, to check a kernel's
    dropout. `upcast` computes in fp64-safe fp32 (or the input's wider dtype) and
    casts back, as the kernel tests' reference.
    """
    total, heads, head_dim = q.shape
    batch = cu_seqlens.numel() - 1
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    out_dtype = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    flat, key_mask = _pad_index(cu_seqlens, max_seqlen, total)

    def pad(x):                                                                # (T, h, d) -> (B, h, L, d)
        padded = x.new_zeros(batch * max_seqlen, heads, head_dim).index_copy(0, flat, x)
        return padded.view(batch, max_seqlen, heads, head_dim).transpose(1, 2)

    qp, kp, vp = pad(q), pad(k), pad(v)                                        # (B, h, L, d)
    mask = key_mask[:, None, None, :]                                          # (B, 1, 1, L)
    if dropout_mask is None:
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, dropout_p=dropout_p,
                                             scale=scale)                     # (B, h, L, d)
    else:
        scores = (qp @ kp.transpose(-1, -2)) * scale                           # (B, h, L, L)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        probs = probs * dropout_mask.to(probs.dtype) / (1.0 - dropout_p)
        out = probs @ vp                                                       # (B, h, L, d)
    out = out.transpose(1, 2).reshape(batch * max_seqlen, heads, head_dim)
    return out.index_select(0, flat).to(out_dtype)                             # (T, h, d)


def _check(q, k, v, cu_seqlens, max_seqlen):
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"attention expects q, k, v of one shape (total_tokens, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be (batch + 1,) offsets; got shape {tuple(cu_seqlens.shape)}")
    if not isinstance(max_seqlen, int):
        raise TypeError(f"max_seqlen must be a Python int (computed on the host), got {type(max_seqlen).__name__}")


def attention(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, seed=None,
              backend="auto"):
    """Non-causal attention on packed sequences: softmax(q kᵀ · scale) v per sequence.

    q, k, v: (total_tokens, heads, head_dim); cu_seqlens: (batch + 1,) int32 offsets;
    max_seqlen: the longest sequence, a Python int. `dropout_p` drops attention
    probabilities; `seed` makes that dropout repeatable (None draws one from torch's
    RNG). `backend`: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".
    Returns (total_tokens, heads, head_dim) in q's dtype.
    """
    _check(q, k, v, cu_seqlens, max_seqlen)
    if resolve(backend, q) == "triton":
        from .attention_triton import attention_triton
        return attention_triton(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale, seed)
    if dropout_p > 0.0 and seed is not None:
        generator = torch.Generator(device=q.device).manual_seed(int(seed))
        lens = cu_seqlens.numel() - 1
        keep = torch.rand(lens, q.shape[1], max_seqlen, max_seqlen, generator=generator,
                          device=q.device) >= dropout_p
        return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale, keep)
    return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale)
