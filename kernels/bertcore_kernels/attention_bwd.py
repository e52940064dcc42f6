"""The Triton attention backward kernels (their launcher is `attention._attention_bwd`).

Two schedules, one result up to fp32 rounding:

- `_attention_bwd_kernel` (default, FlashAttention-2's): program (i, h, b) owns key
  block i (`_attention_bwd_dkdv`); every query block streams past once, and each visit does the five
  matrix products S = K Qᵀ, dP = V dOᵀ, dV += P dO, dK += dS Q, dQ_i = dSᵀ K, the
  last added into an fp32 dQ buffer with atomics. The order of those additions
  varies from run to run, so dQ is not bitwise repeatable.
- `_attention_bwd_det_kernel` (`attention(deterministic=True)`): program i owns key
  block i for dK/dV (the same `_attention_bwd_dkdv`, without the dQ product) and query
  block i for dQ (`_attention_bwd_det_dq`); the dQ pass recomputes S and dP and
  regenerates the dropout mask (seven products), but needs no atomics.

With dropout, both redraw the forward's keep-mask from its seed, or read it from the
bits the forward saved or had prebuilt (`LaunchConfig.dropout_mask`, `attention_philox`).

Scores are in base 2, as in the forward (`attention.py`). Programs pick their
sequence through ORDER, the batch sorted longest first, so the long sequences'
programs start first and the short ones fill in behind them instead of leaving
SMs idle at the end of the grid.
"""
from .attention_philox import _dropout_keep, _read_keep, _rng_rows
from .dispatch import tl, triton


@triton.jit(do_not_specialize=["total_rows"])
def _attention_bwd_preprocess_kernel(
    O,       # (T, H, D) forward output, contiguous
    DO,      # (T, H, D) gradient of the output; token and head strides given
    DELTA,   # (T, H) fp32 out: rowsum(dO * O), the softmax-backward correction term
    DQ_ACC,  # (T, H, D) fp32 out, contiguous: zeroed here for the atomic dQ sums (if ZERO_DQ)
    total_rows, head_dim, nheads, stride_ot, stride_oh, stride_dot, stride_doh,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ZERO_DQ: tl.constexpr,
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
    if ZERO_DQ:
        # Zeroing here saves the memset launch a torch.zeros would cost.
        tl.store(DQ_ACC + rows.to(tl.int64)[:, None] * head_dim + offs_d[None, :],
                 tl.zeros([BLOCK_R, BLOCK_D], tl.float32), mask=mask)


@triton.jit
def _attention_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DQ_ACC, DK, DV, KEEP_BITS, seq_start, seqlen, bid, hid, start_n,
                        sm_scale, dropout_p, seed, threshold, max_seqlen, nheads, head_dim, mask_words,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_gt, stride_gh,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DROPOUT: tl.constexpr, KEEP_FROM_BITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        ATOMIC_DQ: tl.constexpr):
    # Pointers and strides: see `_attention_bwd_kernel`, the caller (DQ_ACC is read only
    # with ATOMIC_DQ). The key/value block at start_n (BLOCK_N keys) stays in registers
    # while the query blocks (BLOCK_M rows) stream past: dK and dV accumulate here
    # without atomics; with ATOMIC_DQ each visit also adds its share of dQ into DQ_ACC.
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < seqlen
    d_mask = offs_d < head_dim
    tok_n = (seq_start + offs_n).to(tl.int64)  # token * stride can pass 2**31
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + tok_n[:, None] * stride_kt + hid * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + tok_n[:, None] * stride_vt + hid * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    drop_scale = 1.0 / (1.0 - dropout_p)

    for start_m in range(0, seqlen, BLOCK_M):
        offs_m = start_m + offs_b
        m_mask = offs_m < seqlen
        tok_m = (seq_start + offs_m).to(tl.int64)
        q_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(Q + tok_m[:, None] * stride_qt + hid * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + tok_m[:, None] * stride_dot + hid * stride_doh + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + tok_m * nheads + hid, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + tok_m * nheads + hid, mask=m_mask, other=0.0)
        # Transposed tiles (keys x queries) so dK/dV's reductions run over queries.
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        p_t = tl.where(n_mask[:, None] & m_mask[None, :], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if DROPOUT:
            if KEEP_FROM_BITS:  # read straight into the transposed tile
                keep_t = _read_keep(KEEP_BITS, (tok_m * nheads + hid)[None, :] * mask_words, m_mask[None, :],
                                      offs_n[:, None], start_n, seqlen, BLOCK_N)
            else:
                keep_t = tl.trans(_dropout_keep(seed, bid * nheads + hid, _rng_rows(max_seqlen, offs_m), start_n,
                                                threshold, BLOCK_M, BLOCK_N))
            pd_t = tl.where(keep_t, p_t * drop_scale, 0.0)
            dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
        else:
            pd_t = p_t
        dv += tl.dot(pd_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        # delta = rowsum(dO * O) equals rowsum(P * dP) even with dropout, since O
        # already carries the mask.
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION) * sm_scale  # (BLOCK_M, BLOCK_D)
            # Relaxed: the sums only need to be complete when the kernel ends.
            tl.atomic_add(DQ_ACC + (tok_m * nheads + hid)[:, None] * head_dim + offs_d[None, :], dq,
                          mask=q_mask, sem="relaxed")

    tl.store(DK + tok_n[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + tok_n[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=["rng_threshold", "max_seqlen", "mask_words"])
def _attention_bwd_kernel(
    Q,           # (T, H, D) forward queries; token and head strides given, unit dim stride
    K,           # (T, H, D) forward keys, same layout rules as Q
    V,           # (T, H, D) forward values, same layout rules as Q
    DO,          # (T, H, D) gradient of the output; token and head strides given
    LSE,         # (T, H) fp32 log2-sum-exp saved by the forward
    DELTA,       # (T, H) fp32 rowsum(dO * O) from the preprocess kernel
    DQ_ACC,      # (T, H, D) fp32 in/out, contiguous, zeroed: dQ summed over key blocks by atomics
    DK,          # (T, H, D) out, contiguous (stride_gt, stride_gh)
    DV,          # (T, H, D) out, contiguous
    CU_SEQLENS,  # (B + 1,) int32 start offset of each sequence in T
    ORDER,       # (B,) int32 sequence indices, longest first: program z runs sequence ORDER[z]
    SEED,        # (1,) int64 Philox seed of the forward's dropout (read if DROPOUT and not KEEP_FROM_BITS)
    KEEP_BITS,   # (T, H, mask_words) int32 the forward's keep-bits (read if DROPOUT and KEEP_FROM_BITS)
    sm_scale, dropout_p, rng_threshold, max_seqlen, nheads, head_dim, mask_words,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_gt, stride_gh,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr, KEEP_FROM_BITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (i, h, b) owns key block i of head h of sequence ORDER[b]: one pass.
    hid = tl.program_id(1)
    bid = tl.load(ORDER + tl.program_id(2))
    seq_start = tl.load(CU_SEQLENS + bid)
    seqlen = tl.load(CU_SEQLENS + bid + 1) - seq_start
    start_n = tl.program_id(0) * BLOCK_N
    if start_n >= seqlen:
        return
    seed = 0
    threshold = rng_threshold.to(tl.uint32, bitcast=True)
    if DROPOUT and not KEEP_FROM_BITS:
        seed = tl.load(SEED)
    _attention_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DQ_ACC, DK, DV, KEEP_BITS, seq_start, seqlen, bid, hid, start_n,
                        sm_scale, dropout_p, seed, threshold, max_seqlen, nheads, head_dim, mask_words,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_gt, stride_gh,
                        BLOCK_M, BLOCK_N, BLOCK_D, DROPOUT, KEEP_FROM_BITS, DOT_PRECISION, True)


@triton.jit
def _attention_bwd_det_dq(Q, K, V, DO, LSE, DELTA, DQ, KEEP_BITS, seq_start, seqlen, bid, hid,
                          sm_scale, dropout_p, seed, threshold, max_seqlen, nheads, head_dim, mask_words,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_dot, stride_doh, stride_gt, stride_gh,
                          BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                          DROPOUT: tl.constexpr, KEEP_FROM_BITS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Pointers and strides: see `_attention_bwd_det_kernel`, the caller.
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
    if DROPOUT and not KEEP_FROM_BITS:
        rng_rows = _rng_rows(max_seqlen, offs_m)
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
            if KEEP_FROM_BITS:
                keep = _read_keep(KEEP_BITS, (tok_m * nheads + hid)[:, None] * mask_words, m_mask[:, None],
                                    offs_n[None, :], start_n, seqlen, BLOCK)
            else:
                keep = _dropout_keep(seed, bid * nheads + hid, rng_rows, start_n, threshold, BLOCK, BLOCK)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + tok_m[:, None] * stride_gt + hid * stride_gh + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit(do_not_specialize=["rng_threshold", "max_seqlen", "mask_words"])
def _attention_bwd_det_kernel(
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
    ORDER,       # (B,) int32 sequence indices, longest first: program z runs sequence ORDER[z]
    SEED,        # (1,) int64 Philox seed of the forward's dropout (read if DROPOUT and not KEEP_FROM_BITS)
    KEEP_BITS,   # (T, H, mask_words) int32 the forward's keep-bits (read if DROPOUT and KEEP_FROM_BITS)
    sm_scale, dropout_p, rng_threshold, max_seqlen, nheads, head_dim, mask_words,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_gt, stride_gh,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    DROPOUT: tl.constexpr, KEEP_FROM_BITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Program (i, h, b) owns key block i for dK/dV and query block i for dQ, as in
    # the Triton fused-attention tutorial: one launch, no atomics.
    hid = tl.program_id(1)
    bid = tl.load(ORDER + tl.program_id(2))
    seq_start = tl.load(CU_SEQLENS + bid)
    seqlen = tl.load(CU_SEQLENS + bid + 1) - seq_start
    if tl.program_id(0) * BLOCK >= seqlen:
        return
    seed = 0
    threshold = rng_threshold.to(tl.uint32, bitcast=True)
    if DROPOUT and not KEEP_FROM_BITS:
        seed = tl.load(SEED)
    # dK/dV as the one-pass kernel computes them, without its dQ atomics (DQ is not read)
    _attention_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DQ, DK, DV, KEEP_BITS, seq_start, seqlen, bid, hid,
                        tl.program_id(0) * BLOCK, sm_scale, dropout_p, seed, threshold, max_seqlen, nheads, head_dim,
                        mask_words,
                        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_gt, stride_gh,
                        BLOCK, BLOCK, BLOCK_D, DROPOUT, KEEP_FROM_BITS, DOT_PRECISION, False)
    _attention_bwd_det_dq(Q, K, V, DO, LSE, DELTA, DQ, KEEP_BITS, seq_start, seqlen, bid, hid,
                          sm_scale, dropout_p, seed, threshold, max_seqlen, nheads, head_dim, mask_words,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_dot, stride_doh, stride_gt, stride_gh,
                          BLOCK, BLOCK_D, DROPOUT, KEEP_FROM_BITS, DOT_PRECISION)
