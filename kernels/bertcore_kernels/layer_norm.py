"""Post-LN residual block tail: LayerNorm(dropout(x) + residual), over the last dim.

The file reads: the PyTorch reference (also the CPU path), the Triton kernels (one
pass over each row: dropout, residual add, statistics, affine), their host
launchers, the autograd Function, and the public `layer_norm`.
"""
import functools

import torch
import torch.nn.functional as F

from .dispatch import resolve, tl, triton
from .dropout import dropout


def layer_norm_ref(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, dropout_mask=None,
                   generator=None, upcast=False):
    """LN(dropout(x) + residual) in plain PyTorch; differentiable.

    `dropout_mask` (same shape as x, bool, True = keep) applies that exact mask,
    scaled by 1/(1-p), to check a kernel's dropout; otherwise dropout draws from
    `generator` (or torch's global RNG). `upcast` computes in fp32 for half inputs.
    """
    # x + residual promotes, as in eager PyTorch: under autocast a bf16 sub-layer
    # output meets the fp32 residual stream and the block's output stays fp32 (HF too).
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    if upcast and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
        residual = residual.float() if residual is not None else None
        weight, bias = weight.float(), bias.float()
    if dropout_mask is not None:
        x = x * dropout_mask.to(x.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        x = dropout(x, dropout_p, generator=generator)
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps).to(out_dtype)


# --------------------------------------------------------------------------- Triton
@triton.jit
def _layer_norm_keep(seed, row64, cols, N, dropout_p):
    # Philox offset = flat element index (int64: M * N can pass 2**31), so the
    # backward regenerates the forward's mask instead of reading a stored one.
    return tl.rand(seed, row64 * N + cols) >= dropout_p


@triton.jit(do_not_specialize=["seed"])
def _layer_norm_fwd_kernel(
    X,     # (M, N) input that dropout applies to (the sub-layer output); row stride given
    R,     # (M, N) residual; row stride given; unused without HAS_RESIDUAL
    W,     # (N,) LayerNorm weight
    B,     # (N,) LayerNorm bias
    Y,     # (M, N) out, contiguous; dtype of x + residual (promoted)
    MEAN,  # (M,) fp32 out: row mean of dropout(x) + residual
    RSTD,  # (M,) fp32 out: 1 / sqrt(var + eps)
    stride_x, stride_r, stride_y, N, eps, dropout_p, seed,
    BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
):
    # One program per row: a BERT row (<= a few thousand features) fits in
    # registers, so the statistics need a single read of x and residual.
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    row64 = row.to(tl.int64)
    x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = _layer_norm_keep(seed, row64, cols, N, dropout_p)
        x = tl.where(keep, x / (1.0 - dropout_p), 0.0)
    if HAS_RESIDUAL:
        x += tl.load(R + row64 * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)  # padding lanes must not add to the variance
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row64 * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=["seed", "M", "rows_per_program"])
def _layer_norm_bwd_kernel(
    DY,          # (M, N) gradient of the output; row stride given
    X,           # (M, N) forward input x; row stride given
    R,           # (M, N) forward residual; row stride given; unused without HAS_RESIDUAL
    W,           # (N,) LayerNorm weight
    MEAN,        # (M,) fp32 saved by the forward
    RSTD,        # (M,) fp32 saved by the forward
    DX,          # (M, N) out, contiguous: gradient of x (dropout mask applied)
    DR,          # (M, N) out, contiguous: gradient of residual; written when STORE_DR
    DW_PARTIAL,  # (programs, N) fp32 out: this program's share of dweight
    DB_PARTIAL,  # (programs, N) fp32 out: this program's share of dbias
    stride_dy, stride_x, stride_r, M, N, dropout_p, seed, rows_per_program,
    BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
    STORE_DR: tl.constexpr,
):
    # Each program walks a contiguous run of rows and keeps its dweight/dbias sums
    # in fp32 registers; the host adds the per-program rows with one .sum(0), so
    # the result does not depend on scheduling (no atomics).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        row64 = tl.cast(row, tl.int64)
        # Rebuild dropout(x) + residual exactly as the forward did (same fp32 math,
        # same Philox draws) rather than saving it: no extra (M, N) tensor.
        x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = _layer_norm_keep(seed, row64, cols, N, dropout_p)
            x = tl.where(keep, x / (1.0 - dropout_p), 0.0)
        if HAS_RESIDUAL:
            x += tl.load(R + row64 * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        dy = tl.load(DY + row64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        ds = (wdy - (xhat * c1 + c2)) * rstd  # gradient w.r.t. dropout(x) + residual
        dw += dy * xhat
        db += dy
        if STORE_DR:
            tl.store(DR + row64 * N + cols, ds.to(DR.dtype.element_ty), mask=mask)
        if DROPOUT:
            ds = tl.where(keep, ds / (1.0 - dropout_p), 0.0)
        tl.store(DX + row64 * N + cols, ds.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * N + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid * N + cols, db, mask=mask)


# ------------------------------------------------------------------- host launchers
def _max_hidden(dtype):
    # A whole row lives in registers; past 64 KiB per row the kernel would spill
    # everything (the Triton LayerNorm tutorial's limit).
    return 65536 // torch.empty((), dtype=dtype).element_size()


def _num_warps(block_n):
    return min(max(block_n // 256, 1), 8)


@functools.cache
def _multi_processors(device_index):
    # asked once per device: the backward runs on the launch-bound path
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _rows(t, n):
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


def _layer_norm_fwd(x, weight, bias, eps, residual, dropout_p, seed):
    """Runs the forward kernel on (M, N) rows. Returns (y, mean, rstd)."""
    M, N = x.shape
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    block_n = triton.next_power_of_2(N)
    r = residual if residual is not None else x  # any valid pointer; never read
    _layer_norm_fwd_kernel[(M,)](
        x, r, weight, bias, y, mean, rstd,
        x.stride(0), r.stride(0), y.stride(0), N, eps, dropout_p, seed,
        BLOCK_N=block_n, HAS_RESIDUAL=residual is not None, DROPOUT=dropout_p > 0.0,
        num_warps=_num_warps(block_n))
    return y, mean, rstd


def _layer_norm_bwd(dy, x, weight, residual, mean, rstd, dropout_p, seed, need_dresidual):
    """Runs the backward kernel. Returns (dx, dweight, dbias, dresidual or None)."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    # Without dropout d(residual) equals dx: one tensor serves both, when they share a dtype.
    store_dr = need_dresidual and (dropout_p > 0.0 or residual.dtype != x.dtype)
    dr = torch.empty((M, N), dtype=residual.dtype, device=x.device) if store_dr else dx
    if M == 0:
        zeros = torch.zeros_like(weight)
        return dx, zeros, zeros.clone(), (dr if need_dresidual else None)
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    if x.is_cuda:
        programs = _multi_processors(x.device.index if x.device.index is not None
                                     else torch.cuda.current_device()) * 4
    else:
        programs = 8  # the interpreter runs programs one by one: few and long is fastest
    programs = min(programs, M)
    rows_per_program = triton.cdiv(M, programs)
    programs = triton.cdiv(M, rows_per_program)
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    db_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(N)
    r = residual if residual is not None else x
    _layer_norm_bwd_kernel[(programs,)](
        dy, x, r, weight, mean, rstd, dx, dr, dw_partial, db_partial,
        dy.stride(0), x.stride(0), r.stride(0), M, N, dropout_p, seed, rows_per_program,
        BLOCK_N=block_n, HAS_RESIDUAL=residual is not None, DROPOUT=dropout_p > 0.0,
        STORE_DR=store_dr, num_warps=_num_warps(block_n))
    dw = dw_partial.sum(0).to(weight.dtype)
    db = db_partial.sum(0).to(weight.dtype)
    return dx, dw, db, (dr if need_dresidual else None)


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, dropout_p, seed):
        shape, N = x.shape, x.shape[-1]
        x2 = _rows(x, N)
        r2 = _rows(residual, N) if residual is not None else None
        y, mean, rstd = _layer_norm_fwd(x2, weight, bias, eps, r2, dropout_p, seed)
        ctx.save_for_backward(x2, weight, r2, mean, rstd)
        ctx.args = (dropout_p, seed, shape)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, r2, mean, rstd = ctx.saved_tensors
        dropout_p, seed, shape = ctx.args
        dx, dw, db, dr = _layer_norm_bwd(_rows(dy, x2.shape[1]), x2, weight, r2, mean, rstd,
                                         dropout_p, seed, ctx.needs_input_grad[3])
        dr = dr.view(shape) if dr is not None else None
        return dx.view(shape), dw, db, dr, None, None, None


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def layer_norm(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, seed=None, backend="auto"):
    """LayerNorm(dropout(x) + residual) over the last dimension, in one pass on a GPU.

    x, residual: (..., hidden); weight, bias: (hidden,). `dropout_p` applies to x
    only (BERT's sub-layer output); `seed` makes it repeatable (None draws one from
    torch's default generator, so `torch.manual_seed` makes runs repeatable; the
    same seed gives the same mask within one backend, not across backends).
    `backend`: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".
    The Triton backend takes hidden sizes up to 16384 (fp32) / 32768 (fp16, bf16)
    and raises beyond; the torch backend has no limit.
    """
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}: they must match")
    if x.dim() == 0:
        raise ValueError("layer_norm needs x of shape (..., hidden), got a scalar")
    if weight.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
        raise ValueError(f"weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must be "
                         f"({x.shape[-1]},), the last dim of x {tuple(x.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if resolve(backend, x) == "triton":
        if x.dtype not in _TRITON_DTYPES or (residual is not None and residual.dtype not in _TRITON_DTYPES):
            raise TypeError(f"the Triton layer_norm runs fp16, bf16 and fp32; got x {x.dtype}, residual "
                            f"{None if residual is None else residual.dtype}; use backend='torch'")
        if x.shape[-1] > _max_hidden(x.dtype):
            raise ValueError(f"the Triton layer_norm holds a row in registers and takes hidden sizes up "
                             f"to {_max_hidden(x.dtype)} for {x.dtype}; got {x.shape[-1]}. "
                             f"Use backend='torch' for wider rows")
        if dropout_p > 0.0 and seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        seed = int(seed) if seed is not None else 0
        return _LayerNormFunction.apply(x, weight, bias, residual, float(eps), float(dropout_p), seed)
    generator = None
    if dropout_p > 0.0 and seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return layer_norm_ref(x, weight, bias, eps, residual, dropout_p, generator=generator)
