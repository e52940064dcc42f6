"""Attention over packed (unpadded) sequences.

Layout: q, k, v are (total_tokens, heads, head_dim), the tokens of all sequences
back to back; `cu_seqlens` (B+1,) int32 holds each sequence's start offset and
`max_seqlen` the longest length as a Python int (known on the host, no sync).
Attention is non-causal and never crosses a sequence boundary.

The file reads: the PyTorch reference, the Triton forward kernel (FlashAttention-2:
online softmax, no L x L matrix in memory), the launch configurations, the host
launchers, the autograd Function and the custom ops (for torch.compile), and the
public `attention`. The backward kernels are in `attention_bwd`, dropout's Philox
draws (eight keep-decisions per call) in `attention_philox`, and the torch backend's
fast path (per run of equal lengths, for lengths on the host) in `attention_torch`.
No host sync on the CUDA path: seeds, the program order and the lengths stay on the
device.
"""
import math
import weakref
from contextlib import contextmanager
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .attention_bwd import _attention_bwd_det_kernel, _attention_bwd_kernel, _attention_bwd_preprocess_kernel
from .attention_philox import (MAX_GRID_BATCH, _dropout_keep, _keep_bits, _mask_words, _read_keep, _rng_rows,
                               _rng_threshold, _save_keep, drawn_dropout_p)
from .attention_torch import attention_runs, equal_length_runs
from .dispatch import interpret_mode, patched, resolve, tl, triton
from .ops import device_seed
from .rng import seed_tensor


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


@triton.jit(do_not_specialize=["rng_threshold", "max_seqlen", "mask_words"])
def _attention_fwd_kernel(
    Q,           # (T, H, D) queries; token and head strides given, unit dim stride
    K,           # (T, H, D) keys, same layout rules as Q
    V,           # (T, H, D) values, same layout rules as Q
    O,           # (T, H, D) output, contiguous
    LSE,         # (T, H) fp32 out: log2-sum-exp of each score row, for the backward
    CU_SEQLENS,  # (B + 1,) int32 start offset of each sequence in T
    ORDER,       # (B,) int32 sequence indices, longest first: program z runs sequence ORDER[z]
    SEED,        # (1,) int64 Philox seed (read if DROPOUT, unless MASK is "prebuilt"; see attention_philox)
    KEEP_BITS,   # (T, H, mask_words) int32 keep-bits: written if MASK is "saved", read if "prebuilt"
    sm_scale, dropout_p, rng_threshold, max_seqlen, nheads, head_dim, mask_words,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0)
    hid = tl.program_id(1)
    # The batch axis is the slowest of the grid, so programs start sequence by
    # sequence in ORDER: the long ones first, the short ones fill in behind.
    bid = tl.load(ORDER + tl.program_id(2))
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
        row_words = (tok_m * nheads + hid) * mask_words  # (M,) where each row's keep-bits start
        if MASK != "prebuilt":
            seed = tl.load(SEED)
            threshold = rng_threshold.to(tl.uint32, bitcast=True)
            rng_rows = _rng_rows(max_seqlen, offs_m)

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
            if MASK == "prebuilt":
                keep = _read_keep(KEEP_BITS, row_words[:, None], m_mask[:, None], cols[None, :], start_n, seqlen,
                                    BLOCK_N)
            else:
                keep = _dropout_keep(seed, bid * nheads + hid, rng_rows, start_n, threshold, BLOCK_M, BLOCK_N)
                if MASK == "saved":
                    _save_keep(KEEP_BITS, row_words, m_mask, keep, p, cols, start_n, seqlen, BLOCK_N)
            p = tl.where(keep, p, 0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    lse = m_i + tl.math.log2(l_i)
    if DROPOUT:
        l_i = l_i * (1.0 - dropout_p)  # folds the 1/(1-p) rescale into the final division
    out = acc / l_i[:, None]
    tl.store(O + tok_m[:, None] * stride_ot + hid * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(LSE + tok_m * nheads + hid, lse, mask=m_mask)


# ------------------------------------------------------------------- launch configs
def _dot_precision(dtype):
    # fp32 follows PyTorch's own switch, so "fp32" means the same thing on both
    # backends; 16-bit inputs always run on tensor cores.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


class LaunchConfig(NamedTuple):
    """Tile sizes and scheduling of one attention kernel launch. "fwd": `block_m` query
    rows per program, `block_n` keys per step. "bwd": `block_n` keys per program,
    `block_m` query rows per step. "bwd_det": square tiles of `block_m` (`block_n` is
    not read). `dropout_mask` (read from "fwd" only) says where dropout's keep-mask
    comes from: "redraw", the forward draws it with Philox on its tiles and the
    backward draws it again; "saved", the forward draws it and saves it as bits
    (1/8 byte per score, kept until the backward), which the backward reads;
    "prebuilt", a kernel of its own (`attention_philox._keep_bits`) draws the bits
    before the forward, and both directions read them. The same masks every way, so
    the same results. A torch.compile trace fixes it (the saved bits' shape), like the
    tiles: reset Dynamo after changing it."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    dropout_mask: str = "redraw"


DROPOUT_MASKS = ("redraw", "saved", "prebuilt")  # the values of LaunchConfig.dropout_mask


HEAD_DIM_BUCKETS = (64, 128, 256)  # a head_dim uses the first bucket >= it
SHORT_MAX = 128                    # max_seqlen <= SHORT_MAX is the "short" length class
LENGTH_CLASSES = ("short", "long")
DIRECTIONS = ("fwd", "bwd", "bwd_det")  # forward, one-pass backward, deterministic backward
_ALL_D, _BOTH = HEAD_DIM_BUCKETS, LENGTH_CLASSES
_16BIT = (torch.float16, torch.bfloat16)

# (dtypes, head_dim buckets, direction, length classes, config), expanded into the table.
# Picked per dtype, head dim and length class, never per exact length: a new batch
# reuses the compiled kernel (two classes at most compile two variants).
_DEFAULTS = [
    # fp32: twice the bytes per element, so smaller tiles fit shared memory.
    ((torch.float32,), _ALL_D, "fwd", _BOTH, (64, 32, 4, 2)),
    ((torch.float32,), _ALL_D, "bwd", _BOTH, (32, 32, 4, 1)),
    ((torch.float32,), _ALL_D, "bwd_det", _BOTH, (32, 32, 4, 1)),
    # 16-bit fwd and bwd_det, head_dim <= 64: the winners of benchmarks/tune_attention.py on
    # an H200 (bf16, BERT batches). Small backward tiles keep more programs in flight on
    # short sequences: mixed 16-512 went 1.04 -> 0.78 ms.
    # Dropout's keep-mask is redrawn from the seed in both classes. With the one-pass
    # backward's (64, 64, 4, 2) tiles below, redrawing beat bits from a kernel of their own
    # ("prebuilt") past 128 keys too: fwd+bwd with dropout 0.1, 0.663 against 0.685 ms at
    # equal 512 and 0.481 against 0.516 at mixed 16-512 (H200, 2026-11-27 21:29; prebuilt
    # had won under the older (32, 128, 4, 3) backward tiles).
    (_16BIT, (64,), "fwd", _BOTH, (64, 32, 4, 4)),
    (_16BIT, (64,), "bwd_det", _BOTH, (32, 32, 4, 2)),
    (_16BIT, (128, 256), "fwd", _BOTH, (128, 64, 8, 2)),
    (_16BIT, (128, 256), "bwd_det", _BOTH, (64, 64, 8, 1)),
    # One-pass backward, head_dim <= 64: tuned as fwd+bwd graph replays with dropout 0.1
    # on the H200, (64, 64, 4, 2) won both classes: equal 128 went 0.303 -> 0.274 ms
    # (from (32, 64, 4, 2)), mixed 16-512 0.598 -> 0.485 (from (32, 128, 4, 3)).
    (_16BIT, (64,), "bwd", _BOTH, (64, 64, 4, 2)),
    # Larger head dims: not tuned yet. FlashAttention-2's shape (few query rows per
    # step, many keys per program: fewer dQ atomics per key).
    (_16BIT, (128,), "bwd", _BOTH, (32, 64, 4, 2)),
    (_16BIT, (256,), "bwd", _BOTH, (16, 32, 8, 1)),
]

# (dtype, head_dim bucket, direction, length class) -> LaunchConfig. Change it through
# `override_launch_configs`, not by assignment.
LAUNCH_CONFIGS: dict[tuple[torch.dtype, int, str, str], LaunchConfig] = {
    (dtype, head_dim, direction, length): LaunchConfig(*cfg)
    for dtypes, head_dims, direction, lengths, cfg in _DEFAULTS
    for dtype in dtypes for head_dim in head_dims for length in lengths
}


def length_class(length) -> str:
    """"short" or "long": a batch's max_seqlen (an int) or a class name, checked."""
    if isinstance(length, str):
        if length not in LENGTH_CLASSES:
            raise ValueError(f"length class {length!r}: expected one of {LENGTH_CLASSES}")
        return length
    return "short" if length <= SHORT_MAX else "long"


def _launch_keys(dtype, head_dim, direction, length=None):
    """The table keys for one (dtype, head_dim, direction) and a length class or
    max_seqlen; length None: both classes."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    bucket = next((b for b in HEAD_DIM_BUCKETS if head_dim <= b), None)
    lengths = LENGTH_CLASSES if length is None else (length_class(length),)
    keys = [(dtype, bucket, direction, cls) for cls in lengths]
    if keys[0] not in LAUNCH_CONFIGS:
        raise ValueError(f"no attention launch config for {dtype}, head_dim={head_dim}: the Triton "
                         f"attention runs fp16/bf16/fp32 with head_dim <= {HEAD_DIM_BUCKETS[-1]}")
    return keys


def launch_config(dtype, head_dim: int, direction: str, length="long") -> LaunchConfig:
    """The LaunchConfig the attention kernels use for this dtype, head dim, direction
    ("fwd"; "bwd", the default one-pass backward; "bwd_det", the deterministic one) and
    batch length: a max_seqlen or a length class ("short", "long"; default "long")."""
    return LAUNCH_CONFIGS[_launch_keys(dtype, head_dim, direction, length)[0]]


@contextmanager
def override_launch_configs(configs: dict):
    """Run the block with some launch configs replaced; the table is restored on exit.

    `configs`: {(dtype, head_dim, direction[, length class]): LaunchConfig, or a 4-tuple
    of tiles that keeps each entry's `dropout_mask`}; head_dim stands for its bucket (64
    covers 1..64, 128 covers 65..128, 256 the rest); without a length class ("short":
    max_seqlen <= 128, "long") both classes change. For tuning sweeps and compile checks;
    not thread-safe (one table per process).

    >>> with override_launch_configs({(torch.bfloat16, 64, "bwd"): (32, 64, 4, 2)}):
    ...     attention(q, k, v, cu_seqlens, max_seqlen).sum().backward()
    """
    new = {key: LaunchConfig(*cfg) if len(cfg) == len(LaunchConfig._fields)
           else LaunchConfig(*cfg, dropout_mask=LAUNCH_CONFIGS[key].dropout_mask)
           for spec, cfg in configs.items() for key in _launch_keys(*spec)}
    for cfg in new.values():
        if cfg.dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask={cfg.dropout_mask!r}: expected one of {DROPOUT_MASKS}")
    with patched(LAUNCH_CONFIGS, new):
        yield


def dropout_mask_configs(source: str, dtype=None, head_dim=None) -> dict:
    """`override_launch_configs`' argument that makes the forward configs (of `dtype`
    and `head_dim`'s bucket, or all) take dropout's keep-mask from `source` ("redraw",
    "saved" or "prebuilt"; see `LaunchConfig`), each keeping its tiles.

    >>> with override_launch_configs(dropout_mask_configs("saved")):
    ...     model(batch)   # every attention forward saves its mask as bits
    """
    if source not in DROPOUT_MASKS:
        raise ValueError(f"dropout mask source {source!r}: expected one of {DROPOUT_MASKS}")
    keys = set(_launch_keys(dtype, head_dim, "fwd")) if dtype is not None else None
    return {key: cfg._replace(dropout_mask=source) for key, cfg in LAUNCH_CONFIGS.items()
            if key[2] == "fwd" and (keys is None or key in keys)}


# ------------------------------------------------------------------- host launchers
def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _block_d(head_dim):
    return max(16, triton.next_power_of_2(head_dim))


# The last cu_seqlens (a weak reference, so a freed tensor never matches), its version
# counter, the mode it was computed in and its order: every layer of an encoder passes
# the same cu_seqlens, and the argsort's three launches are host time on the
# launch-bound path. The mode is (capturing a CUDA graph, inference mode): a capture
# never reuses an order from outside it (the graph must compute its own, in memory it
# owns), nor the other way round; and an order made under `torch.inference_mode` is an
# inference tensor, which a training step may not save for its backward.
_last_order: tuple = (None, -1, None, None)


def _sequence_order(cu_seqlens):
    """(B,) int32 sequence indices, longest first: the kernels' program order. An
    argsort on the device, so the lengths never travel to the host. Any order gives the
    same result; only the scheduling changes."""
    global _last_order
    if torch.compiler.is_compiling():  # traced: the graph computes it (and CSEs repeats)
        return torch.argsort(cu_seqlens[1:] - cu_seqlens[:-1], descending=True).to(torch.int32)
    mode = (cu_seqlens.is_cuda and torch.cuda.is_current_stream_capturing(), torch.is_inference_mode_enabled())
    ref, version, last_mode, order = _last_order
    if ref is not None and ref() is cu_seqlens and cu_seqlens._version == version and last_mode == mode:
        return order
    lens = cu_seqlens[1:] - cu_seqlens[:-1]                                    # (B,)
    order = torch.argsort(lens, descending=True).to(torch.int32)
    _last_order = (weakref.ref(cu_seqlens), cu_seqlens._version, mode, order)
    return order


def _mask_source(dtype, head_dim, max_seqlen, dropout_p, total) -> str:
    """Where a forward's keep-mask comes from (`LaunchConfig.dropout_mask`); "redraw"
    (no bits) without dropout or without a launch. One rule for the launcher and the
    fake kernel."""
    if dropout_p == 0.0 or total == 0 or max_seqlen == 0:
        return "redraw"
    return launch_config(dtype, head_dim, "fwd", max_seqlen).dropout_mask


def _batch_slices(order: torch.Tensor) -> list[torch.Tensor]:
    """`order` in launchable slices (`MAX_GRID_BATCH`). A program reads its sequence's index
    from its slice, so every slice addresses the whole batch's tensors as one launch does."""
    return [order[i:i + MAX_GRID_BATCH] for i in range(0, order.numel(), MAX_GRID_BATCH)]


def _attention_fwd(q, k, v, cu_seqlens, order, max_seqlen, dropout_p, sm_scale, seed):
    """Runs the forward kernel; `seed` a (1,) int64 device tensor (None without dropout).
    Returns (out (T, H, D), lse (T, H) fp32, base 2, keep_bits): keep_bits the
    (T, H, ceil(max_seqlen / 32)) int32 mask the backward reads when the forward's
    launch config saves or prebuilds it, else an empty (0,) tensor (the backward
    redraws it)."""
    total, nheads, head_dim = q.shape
    out = torch.empty((total, nheads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((total, nheads), dtype=torch.float32, device=q.device)
    keep_bits = torch.empty((0,), dtype=torch.int32, device=q.device)
    if total == 0 or max_seqlen == 0:
        return out, lse, keep_bits
    dropout = dropout_p > 0.0
    cfg = launch_config(q.dtype, head_dim, "fwd", max_seqlen)
    source = _mask_source(q.dtype, head_dim, max_seqlen, dropout_p, total)
    words = _mask_words(max_seqlen)
    if source == "saved" and cfg.block_n % 32:
        raise ValueError(f"dropout_mask='saved' writes whole 32-key words: the forward's block_n must be a "
                         f"multiple of 32, got {cfg.block_n}")
    if source == "prebuilt":
        keep_bits = _keep_bits(cu_seqlens, total, max_seqlen, nheads, dropout_p, seed)
    elif source == "saved":
        keep_bits = torch.empty((total, nheads, words), dtype=torch.int32, device=q.device)
    for part in _batch_slices(order):
        _attention_fwd_kernel[(triton.cdiv(max_seqlen, cfg.block_m), nheads, part.numel())](
            q, k, v, out, lse, cu_seqlens, part, seed if dropout else None,
            keep_bits if keep_bits.numel() else None,
            sm_scale, drawn_dropout_p(dropout_p), _rng_threshold(dropout_p), max_seqlen, nheads, head_dim, words,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=_block_d(head_dim),
            DROPOUT=dropout, MASK=source, DOT_PRECISION=_dot_precision(q.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse, keep_bits


def _attention_bwd(do, q, k, v, out, lse, cu_seqlens, order, max_seqlen, dropout_p, sm_scale, seed,
                   keep_bits, deterministic=False):
    """Runs the backward kernels (attention_bwd.py): the one-pass kernel with atomic dQ,
    or with `deterministic` the two-pass one. `keep_bits`: the forward's saved or
    prebuilt mask, or empty (redraw it from `seed`). Returns (dq, dk, dv), each
    (T, H, D) contiguous."""
    total, nheads, head_dim = q.shape
    dk = torch.empty((total, nheads, head_dim), dtype=q.dtype, device=q.device)
    dv = torch.empty_like(dk)
    if total == 0 or max_seqlen == 0:
        return torch.empty_like(dk), dk, dv
    do = _last_dim_contiguous(do)
    dropout = dropout_p > 0.0
    from_bits = dropout and keep_bits.numel() > 0
    seed = seed if dropout and not from_bits else None
    keep_bits = keep_bits if from_bits else None
    block_d = _block_d(head_dim)
    delta = torch.empty((total, nheads), dtype=torch.float32, device=q.device)
    # fp32 dQ sums for the atomics, zeroed by the preprocess kernel.
    dq_acc = None if deterministic else torch.empty((total, nheads, head_dim), dtype=torch.float32,
                                                    device=q.device)
    block_r = 64
    _attention_bwd_preprocess_kernel[(triton.cdiv(total * nheads, block_r),)](
        out, do, delta, dq_acc, total * nheads, head_dim, nheads,
        out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        BLOCK_R=block_r, BLOCK_D=block_d, ZERO_DQ=not deterministic)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               do.stride(0), do.stride(1), dk.stride(0), dk.stride(1))
    flags = dict(BLOCK_D=block_d, DROPOUT=dropout, KEEP_FROM_BITS=from_bits,
                 DOT_PRECISION=_dot_precision(q.dtype))
    mask_words = _mask_words(max_seqlen)
    drop = (drawn_dropout_p(dropout_p), _rng_threshold(dropout_p))  # the mask's own p, and its threshold
    if deterministic:
        dq = torch.empty_like(dk)
        cfg = launch_config(q.dtype, head_dim, "bwd_det", max_seqlen)
        for part in _batch_slices(order):
            _attention_bwd_det_kernel[(triton.cdiv(max_seqlen, cfg.block_m), nheads, part.numel())](
                q, k, v, do, lse, delta, dq, dk, dv, cu_seqlens, part, seed, keep_bits,
                sm_scale, *drop, max_seqlen, nheads, head_dim, mask_words, *strides,
                BLOCK=cfg.block_m, **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dq, dk, dv
    cfg = launch_config(q.dtype, head_dim, "bwd", max_seqlen)
    for part in _batch_slices(order):
        _attention_bwd_kernel[(triton.cdiv(max_seqlen, cfg.block_n), nheads, part.numel())](
            q, k, v, do, lse, delta, dq_acc, dk, dv, cu_seqlens, part, seed, keep_bits,
            sm_scale, *drop, max_seqlen, nheads, head_dim, mask_words, *strides,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return (dq_acc if q.dtype == torch.float32 else dq_acc.to(q.dtype)), dk, dv


# ------------------------------------------------------------------ custom ops, autograd
# The launchers as custom ops, for torch.compile: Dynamo puts them in the graph as
# opaque calls (shapes from the fake implementations) instead of breaking the graph at
# the Triton launch. Eager calls skip the dispatcher and run the launchers directly.
# One implementation serves CUDA tensors and CPU ones (the interpreter).
@torch.library.custom_op("bertcore::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      order: torch.Tensor, seed: Optional[torch.Tensor], max_seqlen: int, dropout_p: float,
                      sm_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attention_fwd(q, k, v, cu_seqlens, order, max_seqlen, dropout_p, sm_scale, seed)


@_attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens, order, seed, max_seqlen, dropout_p, sm_scale):
    total, nheads, head_dim = q.shape
    bits = _mask_source(q.dtype, head_dim, max_seqlen, dropout_p, total) != "redraw"
    bits_shape = (total, nheads, _mask_words(max_seqlen)) if bits else (0,)
    return (q.new_empty((total, nheads, head_dim)), q.new_empty((total, nheads), dtype=torch.float32),
            q.new_empty(bits_shape, dtype=torch.int32))


@torch.library.custom_op("bertcore::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, order: torch.Tensor,
                      seed: Optional[torch.Tensor], keep_bits: torch.Tensor, max_seqlen: int, dropout_p: float,
                      sm_scale: float, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attention_bwd(do, q, k, v, out, lse, cu_seqlens, order, max_seqlen, dropout_p, sm_scale,
                          seed, keep_bits, deterministic)


@_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, cu_seqlens, order, seed, keep_bits, max_seqlen, dropout_p, sm_scale, deterministic):
    return tuple(q.new_empty(q.shape) for _ in range(3))


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, dropout_p, sm_scale, seed, deterministic):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        order = _sequence_order(cu_seqlens)
        if torch.compiler.is_compiling():
            out, lse, keep_bits = torch.ops.bertcore.attention_fwd(q, k, v, cu_seqlens, order, seed, max_seqlen,
                                                                   dropout_p, sm_scale)
        else:
            out, lse, keep_bits = _attention_fwd(q, k, v, cu_seqlens, order, max_seqlen, dropout_p, sm_scale, seed)
        # The seed tensor itself, from which the backward redraws the forward's mask, or
        # the mask itself as bits when the forward saved them or had them prebuilt.
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, order, seed, keep_bits)
        ctx.args = (max_seqlen, dropout_p, sm_scale, deterministic)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, cu_seqlens, order, seed, keep_bits = ctx.saved_tensors
        max_seqlen, dropout_p, sm_scale, deterministic = ctx.args
        if torch.compiler.is_compiling():
            dq, dk, dv = torch.ops.bertcore.attention_bwd(do, q, k, v, out, lse, cu_seqlens, order, seed,
                                                          keep_bits, max_seqlen, dropout_p, sm_scale,
                                                          deterministic)
        else:
            dq, dk, dv = _attention_bwd(do, q, k, v, out, lse, cu_seqlens, order, max_seqlen, dropout_p,
                                        sm_scale, seed, keep_bits, deterministic)
        return dq, dk, dv, None, None, None, None, None, None


# ------------------------------------------------------------------------- public
def _check(q, k, v, cu_seqlens, max_seqlen, dropout_p):
    """Raises on bad arguments; returns cu_seqlens as a list when it is on the host
    (checked too), None on a GPU."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"attention expects q, k, v of one shape (total_tokens, heads, head_dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    # Both backends refuse the same inputs: without these the torch backend failed deep in
    # SDPA or split() and the Triton one divided by a zero head_dim or truncated float offsets.
    if not q.is_floating_point():
        raise TypeError(f"attention expects floating-point q, k, v; got {q.dtype}")
    if q.shape[-1] == 0:
        raise ValueError(f"attention expects head_dim >= 1; got q of shape {tuple(q.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must hold integer offsets (int32); got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be (batch + 1,) offsets; got shape {tuple(cu_seqlens.shape)}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(f"max_seqlen must be a Python int (computed on the host), got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be >= 0, got {max_seqlen}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if cu_seqlens.device.type != "cpu" or torch.compiler.is_compiling():
        # On a GPU a check would cost a sync, so there the caller's word (the
        # collator computed both) is taken; a traced graph cannot read values.
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
              backend="auto", deterministic=False):
    """Non-causal attention on packed sequences: softmax(q kᵀ · scale) v per sequence.

    q, k, v: (total_tokens, heads, head_dim), each may be a strided view (e.g. one
    slice of a fused (T, 3, heads, head_dim) projection); cu_seqlens: (batch + 1,)
    int32 offsets; max_seqlen: the longest sequence, a Python int (it sizes the
    grid; it must not be smaller than the real longest). `dropout_p` drops attention
    probabilities; `seed` makes that dropout repeatable (None: the Triton backend
    draws a seed on the device, `rng.next_seed`, the torch backend from torch's
    generator; either way `torch.manual_seed` makes runs repeatable). The same seed
    gives the same mask within one backend, not across backends.
    `deterministic` (Triton backend): the two-pass backward, bitwise repeatable; the
    default one-pass backward sums dQ with atomics, faster but not bitwise repeatable.
    `backend`: "auto" (Triton on CUDA, torch on CPU; see `dispatch`), "triton" or
    "torch". The torch backend runs one unmasked SDPA per run of equal lengths when
    cu_seqlens is on the CPU (`attention_torch`), else `attention_ref`'s repadding
    (also under torch.compile, which cannot read the lengths).
    Under torch.compile the Triton kernels run as the custom ops `bertcore::attention_fwd`
    and `bertcore::attention_bwd`, the seed as `bertcore::device_seed`.
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
        scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        dropout_p, deterministic = float(dropout_p), bool(deterministic)
        seed_t = None
        if dropout_p > 0.0:  # a (1,) int64 device tensor: no host sync, fresh in a graph replay
            seed_t = device_seed(q) if seed is None else seed_tensor(seed, q.device)
        # The kernels read cu_seqlens[b] at base + b: a strided view (a column of a larger
        # tensor) must be made contiguous; contiguous() returns an already contiguous one as is.
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        return _AttentionFunction.apply(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale, seed_t,
                                        deterministic)
    if dropout_p > 0.0 and seed is not None:  # a repeatable mask: drawn whole from its own generator
        # manual_seed takes [-2**63, 2**64); the Triton backend takes any int: reduce it the
        # way manual_seed reads a negative one (two's complement), so in-range seeds keep their masks.
        generator = torch.Generator(device=q.device).manual_seed(int(seed) % 2**64)
        batch = cu_seqlens.numel() - 1
        keep = torch.rand(batch, q.shape[1], max_seqlen, max_seqlen, generator=generator,
                          device=q.device) >= dropout_p
        return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale, keep)
    if offsets is not None:
        return attention_runs(q, k, v, equal_length_runs(offsets), dropout_p, softmax_scale)
    return attention_ref(q, k, v, cu_seqlens, max_seqlen, dropout_p, softmax_scale)
