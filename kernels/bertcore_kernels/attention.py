"""Attention over packed (unpadded) sequences.

Layout: q, k, v are (total_tokens, heads, head_dim), the tokens of all sequences
back to back; `cu_seqlens` (B+1,) int32 holds each sequence's start offset and
`max_seqlen` the longest length as a Python int (known on the host, no sync).
Attention is non-causal and never crosses a sequence boundary.

The file reads: the PyTorch reference, the Triton kernels (FlashAttention-2:
online softmax, no L x L matrix in memory), their launch configurations and host
launchers, the autograd Function, and the public `attention`. The torch backend's
fast path (per run of equal lengths, for lengths on the host) is `attention_torch`.
"""
import math
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .attention_torch import attention_runs, equal_length_runs
from .dispatch import interpret_mode, resolve, tl, triton


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
    if max_seqlen > 0:
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



# --------------------------------------------------------------------------- Triton
# Scores live in base 2: exp2 is a single instruction, so q.k is pre-multiplied by
# log2(e) = 1.4426950408889634 and the saved logsumexp is in log2 units too.


@triton.jit
def _dropout_keep(seed, rng_row, cols, dropout_p):
    # One Philox draw per (batch, head, row, col): the forward, the backward and
    # `_dropout_mask_kernel` all call this with the same offsets, so they agree
    # bit for bit and the backward never needs a stored L x L mask.
    return tl.rand(seed, rng_row + cols) >= dropout_p


@triton.jit
def _rng_base(bid, hid, nheads, max_seqlen):
    # int64: B * H * L * L overflows int32 for large batches.
    return (bid * nheads + hid).to(tl.int64) * max_seqlen * max_seqlen


@triton.jit(do_not_specialize=["seed", "max_seqlen"])
def _attention_fwd_kernel(
    Q,           # (T, H, D) queries; token and head strides given, unit dim stride
    K,           # (T, H, D) keys, same layout rules as Q
    V,           # (T, H, D) values, same layout rules as Q
    O,           # (T, H, D) output, contiguous
    LSE,         # (T, H) fp32 out: log2-sum-exp of each score row, for the backward
    CU_SEQLENS,  # (B + 1,) int32 start offset of each sequence in T
    sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0)
    bid = tl.program_id(1)
    hid = tl.program_id(2)
    seq_start = tl.load(CU_SEQLENS + bid)
    seqlen = tl.load(CU_SEQLENS + bid + 1) - seq_start
    # The grid is sized for the longest sequence; shorter ones (and empty ones)
    # leave their surplus programs idle.
    if start_m * BLOCK_M >= seqlen:
        return

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < seqlen
    d_mask = offs_d < head_dim
    tok_m = (seq_start + offs_m).to(tl.int64)  # token * stride can pass 2**31
    q = tl.load(Q + tok_m[:, None] * stride_qt + hid * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if DROPOUT:
        rng_row = _rng_base(bid, hid, nheads, max_seqlen) + offs_m.to(tl.int64)[:, None] * max_seqlen

    for start_n in range(0, seqlen, BLOCK_N):
        cols = start_n + offs_n
        n_mask = cols < seqlen
        tok_n = (seq_start + cols).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K + tok_n[:, None] * stride_kt + hid * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + tok_n[:, None] * stride_vt + hid * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # Every block holds at least one real key (start_n < seqlen), so the running
        # max is finite after the first block and no row ever sees exp2(-inf - -inf).
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        # The normaliser sums the undropped probabilities: dropout acts on softmax's output.
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, rng_row, cols[None, :], dropout_p), p, 0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    lse = m_i + tl.math.log2(l_i)
    if DROPOUT:
        l_i = l_i * (1.0 - dropout_p)  # folds the 1/(1-p) rescale into the final division
    out = acc / l_i[:, None]
    tl.store(O + tok_m[:, None] * stride_ot + hid * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(LSE + tok_m * nheads + hid, lse, mask=m_mask)


@triton.jit(do_not_specialize=["total_rows"])
def _attention_bwd_preprocess_kernel(
    O,      # (T, H, D) forward output, contiguous
    DO,     # (T, H, D) gradient of the output; token and head strides given
    DELTA,  # (T, H) fp32 out: rowsum(dO * O), the softmax-backward correction term
    total_rows, head_dim, nheads, stride_ot, stride_oh, stride_dot, stride_doh,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Rows are (token, head) pairs, flattened; the grid covers T * H of them.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < total_rows)[:, None] & (offs_d < head_dim)[None, :]
    tok = (rows // nheads).to(tl.int64)
    hid = rows % nheads
    o = tl.load(O + tok[:, None] * stride_ot + hid[:, None] * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + tok[:, None] * stride_dot + hid[:, None] * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + rows, delta, mask=rows < total_rows)


@triton.jit
def _attention_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, seq_start, seqlen, bid, hid,
                        sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_gt, stride_gh,
                        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                        DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Pointers and strides: see `_attention_bwd_kernel`, the caller.
    # One key/value block stays in registers while every query block of the
    # sequence streams past: dK and dV accumulate without atomics.
    offs_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_b = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < seqlen
    d_mask = offs_d < head_dim
    tok_n = (seq_start + offs_n).to(tl.int64)
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + tok_n[:, None] * stride_kt + hid * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + tok_n[:, None] * stride_vt + hid * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    if DROPOUT:
        rng_base = _rng_base(bid, hid, nheads, max_seqlen)
        drop_scale = 1.0 / (1.0 - dropout_p)

    for start_m in range(0, seqlen, BLOCK):
        offs_m = start_m + offs_b
        m_mask = offs_m < seqlen
        tok_m = (seq_start + offs_m).to(tl.int64)
        q_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(Q + tok_m[:, None] * stride_qt + hid * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + tok_m[:, None] * stride_dot + hid * stride_doh + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + tok_m * nheads + hid, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + tok_m * nheads + hid, mask=m_mask, other=0.0)
        # Transposed tiles (keys x queries) so the reductions run over queries.
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        p_t = tl.where(n_mask[:, None] & m_mask[None, :], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if DROPOUT:
            keep_t = _dropout_keep(seed, rng_base + offs_m.to(tl.int64)[None, :] * max_seqlen,
                                   offs_n[:, None], dropout_p)
            pd_t = tl.where(keep_t, p_t * drop_scale, 0.0)
            dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
        else:
            pd_t = p_t
        dv += tl.dot(pd_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        # delta = rowsum(dO * O) equals rowsum(P * dP) even with dropout, since O
        # already carries the mask.
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    tl.store(DK + tok_n[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + tok_n[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, seq_start, seqlen, bid, hid,
                      sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
                      stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                      stride_dot, stride_doh, stride_gt, stride_gh,
                      BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                      DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Pointers and strides: see `_attention_bwd_kernel`, the caller.
    # One query block stays in registers while the key blocks stream past; a
    # separate pass from dK/dV, so dQ needs no atomics and is deterministic.
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_b = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < seqlen
    d_mask = offs_d < head_dim
    tok_m = (seq_start + offs_m).to(tl.int64)
    q_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + tok_m[:, None] * stride_qt + hid * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + tok_m[:, None] * stride_dot + hid * stride_doh + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + tok_m * nheads + hid, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + tok_m * nheads + hid, mask=m_mask, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    if DROPOUT:
        rng_row = _rng_base(bid, hid, nheads, max_seqlen) + offs_m.to(tl.int64)[:, None] * max_seqlen
        drop_scale = 1.0 / (1.0 - dropout_p)

    for start_n in range(0, seqlen, BLOCK):
        offs_n = start_n + offs_b
        n_mask = offs_n < seqlen
        tok_n = (seq_start + offs_n).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K + tok_n[:, None] * stride_kt + hid * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + tok_n[:, None] * stride_vt + hid * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
        p = tl.where(n_mask[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, rng_row, offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + tok_m[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit(do_not_specialize=["seed", "max_seqlen"])
def _attention_bwd_kernel(
    Q,           # (T, H, D) forward queries; token and head strides given
    K,           # (T, H, D) forward keys
    V,           # (T, H, D) forward values
    DO,          # (T, H, D) gradient of the output; token and head strides given
    LSE,         # (T, H) fp32 log2-sum-exp saved by the forward
    DELTA,       # (T, H) fp32 rowsum(dO * O) from the preprocess kernel
    DQ,          # (T, H, D) out, contiguous (stride_gt, stride_gh)
    DK,          # (T, H, D) out, contiguous
    DV,          # (T, H, D) out, contiguous
    CU_SEQLENS,  # (B + 1,) int32 start offset of each sequence in T
    sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_gt, stride_gh,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (i, b, h) owns key block i for dK/dV and query block i for dQ, as in
    # the Triton fused-attention tutorial: one launch, no atomics.
    bid = tl.program_id(1)
    hid = tl.program_id(2)
    seq_start = tl.load(CU_SEQLENS + bid)
    seqlen = tl.load(CU_SEQLENS + bid + 1) - seq_start
    if tl.program_id(0) * BLOCK >= seqlen:
        return
    _attention_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, seq_start, seqlen, bid, hid,
                        sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_gt, stride_gh,
                        BLOCK, BLOCK_D, DROPOUT, DOT_PRECISION)
    _attention_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, seq_start, seqlen, bid, hid,
                      sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
                      stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                      stride_dot, stride_doh, stride_gt, stride_gh,
                      BLOCK, BLOCK_D, DROPOUT, DOT_PRECISION)


@triton.jit(do_not_specialize=["seed", "max_seqlen"])
def _dropout_mask_kernel(
    MASK,        # (B, H, L, L) uint8 out: 1 where the kernels keep a probability
    dropout_p, seed, max_seqlen, nheads,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # For tests: materialises the keep-mask that the forward and backward draw
    # from the same Philox stream (FlashAttention's tests do the same).
    start_m = tl.program_id(0)
    bid = tl.program_id(1)
    hid = tl.program_id(2)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    base = _rng_base(bid, hid, nheads, max_seqlen)
    rng_row = base + offs_m.to(tl.int64)[:, None] * max_seqlen
    for start_n in range(0, max_seqlen, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, rng_row, cols[None, :], dropout_p)
        mask = (offs_m < max_seqlen)[:, None] & (cols < max_seqlen)[None, :]
        tl.store(MASK + rng_row + cols[None, :], keep.to(tl.uint8), mask=mask)


# ------------------------------------------------------------------- host launchers
def _dot_precision(dtype):
    # fp32 follows PyTorch's own switch, so "fp32" means the same thing on both
    # backends; 16-bit inputs always run on tensor cores.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


class LaunchConfig(NamedTuple):
    """Tile sizes and scheduling of one attention kernel launch. The backward kernel
    uses square tiles: `block_m` rows and columns (`block_n` is not read)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


HEAD_DIM_BUCKETS = (64, 256)  # a head_dim uses the first bucket >= it


# (dtype, head_dim bucket, "fwd" | "bwd") -> LaunchConfig. Picked per dtype and head
# dim, never per sequence length, so a new batch reuses the compiled kernel. Change it
# through `override_launch_configs`, not by assignment.
LAUNCH_CONFIGS: dict[tuple[torch.dtype, int, str], LaunchConfig] = {
    # fp32: twice the bytes per element, so smaller tiles fit shared memory.
    (torch.float32, 64, "fwd"): LaunchConfig(64, 32, 4, 2),
    (torch.float32, 256, "fwd"): LaunchConfig(64, 32, 4, 2),
    (torch.float32, 64, "bwd"): LaunchConfig(32, 32, 4, 1),
    (torch.float32, 256, "bwd"): LaunchConfig(32, 32, 4, 1),
    # 16-bit, head_dim <= 64: the winners of benchmarks/tune_attention.py on an H200
    # (bf16, BERT batches, results/nvidia-h200/tune_attention.csv). Small backward tiles
    # keep more programs in flight on short sequences: mixed 16-512 went 1.04 -> 0.78 ms.
    (torch.float16, 64, "fwd"): LaunchConfig(64, 32, 4, 4),
    (torch.bfloat16, 64, "fwd"): LaunchConfig(64, 32, 4, 4),
    (torch.float16, 64, "bwd"): LaunchConfig(32, 32, 4, 2),
    (torch.bfloat16, 64, "bwd"): LaunchConfig(32, 32, 4, 2),
    (torch.float16, 256, "fwd"): LaunchConfig(128, 64, 8, 2),
    (torch.bfloat16, 256, "fwd"): LaunchConfig(128, 64, 8, 2),
    (torch.float16, 256, "bwd"): LaunchConfig(64, 64, 8, 1),
    (torch.bfloat16, 256, "bwd"): LaunchConfig(64, 64, 8, 1),
}


def _launch_key(dtype, head_dim, direction):
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"direction={direction!r}: expected 'fwd' or 'bwd'")
    bucket = next((b for b in HEAD_DIM_BUCKETS if head_dim <= b), None)
    key = (dtype, bucket, direction)
    if key not in LAUNCH_CONFIGS:
        raise ValueError(f"no attention launch config for {dtype}, head_dim={head_dim}: the Triton "
                         f"attention runs fp16/bf16/fp32 with head_dim <= {HEAD_DIM_BUCKETS[-1]}")
    return key


def launch_config(dtype, head_dim: int, direction: str) -> LaunchConfig:
    """The LaunchConfig the attention kernels use for this dtype, head dim and
    direction ("fwd", or "bwd" for the backward kernel)."""
    return LAUNCH_CONFIGS[_launch_key(dtype, head_dim, direction)]


@contextmanager
def override_launch_configs(configs: dict):
    """Run the block with some launch configs replaced; the table is restored on exit.

    `configs`: {(dtype, head_dim, "fwd" | "bwd"): LaunchConfig or a 4-tuple}; head_dim
    stands for its bucket (64 covers 1..64, 256 covers 65..256). For tuning sweeps and
    compile checks; not thread-safe (one table per process).

    >>> with override_launch_configs({(torch.bfloat16, 64, "bwd"): (64, 64, 4, 2)}):
    ...     attention(q, k, v, cu_seqlens, max_seqlen).sum().backward()
    """
    new = {_launch_key(*key): LaunchConfig(*cfg) for key, cfg in configs.items()}
    saved = dict(LAUNCH_CONFIGS)
    LAUNCH_CONFIGS.update(new)
    try:
        yield
    finally:
        LAUNCH_CONFIGS.clear()
        LAUNCH_CONFIGS.update(saved)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _block_d(head_dim):
    return max(16, triton.next_power_of_2(head_dim))


def _attention_fwd(q, k, v, cu_seqlens, max_seqlen, dropout_p, sm_scale, seed):
    """Runs the forward kernel. Returns (out (T, H, D), lse (T, H) fp32, base 2)."""
    total, nheads, head_dim = q.shape
    batch = cu_seqlens.numel() - 1
    out = torch.empty((total, nheads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((total, nheads), dtype=torch.float32, device=q.device)
    if total == 0 or max_seqlen == 0:
        return out, lse
    block_m, block_n, num_warps, num_stages = launch_config(q.dtype, head_dim, "fwd")
    grid = (triton.cdiv(max_seqlen, block_m), batch, nheads)
    _attention_fwd_kernel[grid](
        q, k, v, out, lse, cu_seqlens,
        sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block_d(head_dim),
        DROPOUT=dropout_p > 0.0, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages)
    return out, lse


def _attention_bwd(do, q, k, v, out, lse, cu_seqlens, max_seqlen, dropout_p, sm_scale, seed):
    """Runs the backward kernels. Returns (dq, dk, dv), each (T, H, D) contiguous."""
    total, nheads, head_dim = q.shape
    batch = cu_seqlens.numel() - 1
    dq = torch.empty((total, nheads, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    if total == 0 or max_seqlen == 0:
        return dq, dk, dv
    do = _last_dim_contiguous(do)
    delta = torch.empty((total, nheads), dtype=torch.float32, device=q.device)
    block_r = 64
    _attention_bwd_preprocess_kernel[(triton.cdiv(total * nheads, block_r),)](
        out, do, delta, total * nheads, head_dim, nheads,
        out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        BLOCK_R=block_r, BLOCK_D=_block_d(head_dim))
    block, _, num_warps, num_stages = launch_config(q.dtype, head_dim, "bwd")
    grid = (triton.cdiv(max_seqlen, block), batch, nheads)
    _attention_bwd_kernel[grid](
        q, k, v, do, lse, delta, dq, dk, dv, cu_seqlens,
        sm_scale, dropout_p, seed, max_seqlen, nheads, head_dim,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        BLOCK=block, BLOCK_D=_block_d(head_dim),
        DROPOUT=dropout_p > 0.0, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages)
    return dq, dk, dv


def _dropout_mask(cu_seqlens, max_seqlen, nheads, dropout_p, seed, device=None):
    """The exact keep-mask (B, H, L, L) bool that the Triton attention kernels use for
    (seed, dropout_p); feed it to `attention_ref(dropout_mask=...)` to check them."""
    batch = cu_seqlens.numel() - 1
    device = device if device is not None else cu_seqlens.device
    mask = torch.zeros((batch, nheads, max_seqlen, max_seqlen), dtype=torch.uint8, device=device)
    if mask.numel():
        grid = (triton.cdiv(max_seqlen, 32), batch, nheads)
        _dropout_mask_kernel[grid](mask, dropout_p, seed, max_seqlen, nheads, BLOCK_M=32, BLOCK_N=32)
    return mask.bool()


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, dropout_p, sm_scale, seed):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = _attention_fwd(q, k, v, cu_seqlens, max_seqlen, dropout_p, sm_scale, seed)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (max_seqlen, dropout_p, sm_scale, seed)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        max_seqlen, dropout_p, sm_scale, seed = ctx.args
        dq, dk, dv = _attention_bwd(do, q, k, v, out, lse, cu_seqlens, max_seqlen, dropout_p,
                                    sm_scale, seed)
        return dq, dk, dv, None, None, None, None, None


def _check(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    """Raises on bad arguments; returns cu_seqlens as a list when it is on the host
    (checked too), None on a GPU."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"attention expects q, k, v of one shape (total_tokens, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be (batch + 1,) offsets; got shape {tuple(cu_seqlens.shape)}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(f"max_seqlen must be a Python int (computed on the host), got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be >= 0, got {max_seqlen}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if cu_seqlens.device.type != "cpu":
        # On a GPU a check would cost a sync, so there the caller's word (the
        # collator computed both) is taken.
        return None
    offsets = cu_seqlens.tolist()
    lens = [b - a for a, b in zip(offsets, offsets[1:])]
    if offsets[0] != 0 or offsets[-1] != q.shape[0] or min(lens) < 0:
        raise ValueError(f"cu_seqlens must rise from 0 to total_tokens={q.shape[0]}; got {offsets}")
    if max(lens) > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} but a sequence has {max(lens)} tokens")
    return offsets


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def attention(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, seed=None,
              backend="auto"):
    """Non-causal attention on packed sequences: softmax(q kᵀ · scale) v per sequence.

    q, k, v: (total_tokens, heads, head_dim), each may be a strided view (e.g. one
    slice of a fused (T, 3, heads, head_dim) projection); cu_seqlens: (batch + 1,)
    int32 offsets; max_seqlen: the longest sequence, a Python int (it sizes the
    grid; it must not be smaller than the real longest). `dropout_p` drops attention
    probabilities; `seed` makes that dropout repeatable (None draws one from torch's
    default generator, so `torch.manual_seed` makes runs repeatable). The same seed
    gives the same mask within one backend, not across backends.
    `backend`: "auto" (Triton on CUDA, torch on CPU; see `dispatch`), "triton" or
    "torch". The torch backend runs one unmasked SDPA per run of equal lengths when
    cu_seqlens is on the CPU (`attention_torch`), else `attention_ref`'s repadding.
    Returns (total_tokens, heads, head_dim) in q's dtype.
    """
    offsets = _check(q, k, v, cu_seqlens, max_seqlen, dropout_p)               # host offsets or None
    if resolve(backend, q) == "triton":
        if q.dtype not in _TRITON_DTYPES:
            raise TypeError(f"the Triton attention runs fp16, bf16 and fp32, not {q.dtype}; "
                            f"cast the inputs or use backend='torch'")
        if q.dtype == torch.bfloat16 and interpret_mode():
            raise TypeError("Triton's CPU interpreter computes tl.dot on bf16 wrongly; run bf16 "
                            "attention on a GPU, or use fp16/fp32 or backend='torch'")
        if q.shape[-1] > 256:
            raise ValueError(f"the Triton attention supports head_dim <= 256, got {q.shape[-1]}; "
                             f"use backend='torch'")
        scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if dropout_p > 0.0 and seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        seed = int(seed) if seed is not None else 0
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
        return _AttentionFunction.apply(q, k, v, cu_seqlens, max_seqlen, float(dropout_p),
                                        float(scale), seed)
    if dropout_p > 0.0 and seed is not None:  # a repeatable mask: drawn whole from its own generator
        generator = torch.Generator(device=q.device).manual_seed(int(seed))
        batch = cu_seqlens.numel() - 1
        keep = torch.rand(batch, q.shape[1], max_seqlen, max_seqlen, generator=generator,
                          device=q.device) >= dropout_p
        return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale, keep)
    if offsets is not None:
        return attention_runs(q, k, v, equal_length_runs(offsets), dropout_p, softmax_scale)
    return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale)
