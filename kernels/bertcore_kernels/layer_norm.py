"""Post-LN residual block tail: LayerNorm(dropout(x) + residual), over the last dim.

The file reads: the PyTorch reference (also the CPU path), the Triton kernels (one
pass over each tile of rows: dropout, residual add, statistics, affine), the launch
configuration table, their host launchers and the custom ops that wrap them for
`torch.compile`, the autograd Function, and the public `layer_norm`.
"""
from contextlib import contextmanager
import functools
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .attention_philox import PHILOX_ROUNDS
from .dispatch import patched, resolve, tl, triton
from .dropout import dropout
from .ops import device_seed
from .rng import seed_tensor


def _out_dtype(x, residual):
    """x + residual promotes, as in eager PyTorch: under autocast a bf16 sub-layer output
    meets the fp32 residual stream and the block's output stays fp32 (HF too)."""
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def layer_norm_ref(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, dropout_mask=None,
                   generator=None, upcast=False):
    """LN(dropout(x) + residual) in plain PyTorch; differentiable.

    `dropout_mask` (same shape as x, bool, True = keep) applies that exact mask,
    scaled by 1/(1-p), to check a kernel's dropout; otherwise dropout draws from
    `generator` (or torch's global RNG). `upcast` computes in fp32 for half inputs.
    """
    out_dtype = _out_dtype(x, residual)
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
    # weight and bias may have another float dtype than x (the Triton kernel reads them in
    # fp32 whatever theirs): normalise in the widest of the three instead of hitting
    # F.layer_norm's mixed-dtype error on the CPU; a no-op where they all match.
    dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), bias.dtype)
    return F.layer_norm(x.to(dtype), x.shape[-1:], weight.to(dtype), bias.to(dtype), eps).to(out_dtype)


# --------------------------------------------------------------------------- Triton
@triton.jit
def _layer_norm_keep(SEED, rows64, threshold, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    # (ROWS, BLOCK_N) keep-mask. One Philox call (7 rounds, see attention_philox) gives
    # four 32-bit outputs: element (row, 4q + j) takes output j of the call at counter
    # (c0, c1) = (q, row), two 32-bit words, so no per-element arithmetic runs in 64
    # bits. The backward calls this with the same rows, so it regenerates the
    # forward's mask instead of reading a stored one.
    seed = tl.load(SEED)
    q = tl.arange(0, BLOCK_N // 4).to(tl.uint32)
    zero = tl.zeros((ROWS, BLOCK_N // 4), tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, zero + q[None, :], zero + rows64.to(tl.uint32)[:, None], zero, zero,
                               PHILOX_ROUNDS)
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (ROWS, BLOCK_N))  # [.., 4q + j] = r_j
    # keep when the top 31 bits are >= threshold = p * 2**31: an integer compare
    return (r >> 1).to(tl.int32, bitcast=True) >= threshold


@triton.jit(do_not_specialize=["M", "threshold"])
def _layer_norm_fwd_kernel(
    X,     # (M, N) input that dropout applies to (the sub-layer output); row stride given
    R,     # (M, N) residual; row stride given; unused without HAS_RESIDUAL
    W,     # (N,) LayerNorm weight
    B,     # (N,) LayerNorm bias
    Y,     # (M, N) out, contiguous; dtype of x + residual (promoted)
    Y_COPY,  # (M, N) out, contiguous: Y cast to the copy dtype; written with STORE_COPY
    MEAN,  # (M,) fp32 out: row mean of dropout(x) + residual
    RSTD,  # (M,) fp32 out: 1 / sqrt(var + eps)
    SEED,  # (1,) int64 Philox seed (device memory: a CUDA graph replays a fresh one); read with DROPOUT
    stride_x, stride_r, stride_y, M, N, eps, dropout_p, threshold,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
    STORE_COPY: tl.constexpr,
):
    # ROWS rows per program: a BERT row (<= a few thousand features) fits in registers,
    # so the statistics need a single read of x and residual, and several rows per
    # program keep enough bytes in flight for 16-bit rows of 768 (LAUNCH_CONFIGS).
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < N)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = _layer_norm_keep(SEED, rows64, threshold, ROWS, BLOCK_N)
        x = tl.where(keep, x * (1.0 / (1.0 - dropout_p)), 0.0)
    if HAS_RESIDUAL:
        x += tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding lanes must not add to the variance
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    y = y.to(Y.dtype.element_ty)
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y, mask=mask)
    if STORE_COPY:  # the cast a following autocast matrix product would make, without re-reading Y
        tl.store(Y_COPY + rows64[:, None] * N + cols[None, :], y.to(Y_COPY.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit(do_not_specialize=["M", "rows_per_program", "threshold"])
def _layer_norm_bwd_kernel(
    DY,          # (M, N) gradient of the output; row stride given
    DY_COPY,     # (M, N) gradient of the forward's Y_COPY; row stride given; read with HAS_DY_COPY
    X,           # (M, N) forward input x; row stride given
    R,           # (M, N) forward residual; row stride given; unused without HAS_RESIDUAL
    W,           # (N,) LayerNorm weight
    MEAN,        # (M,) fp32 saved by the forward
    RSTD,        # (M,) fp32 saved by the forward
    DX,          # (M, N) out, contiguous: gradient of x (dropout mask applied)
    DR,          # (M, N) out, contiguous: gradient of residual; written when STORE_DR
    DW_PARTIAL,  # (programs, N) fp32 out: this program's share of dweight
    DB_PARTIAL,  # (programs, N) fp32 out: this program's share of dbias
    SEED,        # (1,) int64 the forward's Philox seed; read with DROPOUT
    stride_dy, stride_dyc, stride_x, stride_r, M, N, dropout_p, threshold, rows_per_program,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
    STORE_DR: tl.constexpr, HAS_DY_COPY: tl.constexpr,
):
    # Each program walks a contiguous run of rows (a multiple of ROWS), ROWS at a time,
    # and keeps its dweight/dbias sums in fp32 registers; the host adds the
    # per-program rows with one .sum(0), so the result does not depend on scheduling
    # (no atomics).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, ROWS):
        rows = start + tl.arange(0, ROWS)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        # Rebuild dropout(x) + residual exactly as the forward did (same fp32 math,
        # same Philox draws) rather than saving it: no extra (M, N) tensor.
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = _layer_norm_keep(SEED, rows64, threshold, ROWS, BLOCK_N)
            x = tl.where(keep, x * (1.0 / (1.0 - dropout_p)), 0.0)
        if HAS_RESIDUAL:
            x += tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_DY_COPY:  # Y and its copy are the same values: their gradients add
            dy += tl.load(DY_COPY + rows64[:, None] * stride_dyc + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        ds = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]  # d(dropout(x) + residual)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
        out = rows64[:, None] * N + cols[None, :]
        if STORE_DR:
            tl.store(DR + out, ds.to(DR.dtype.element_ty), mask=mask)
        if DROPOUT:
            ds = tl.where(keep, ds * (1.0 / (1.0 - dropout_p)), 0.0)
        tl.store(DX + out, ds.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * N + cols, dw, mask=col_ok)
    tl.store(DB_PARTIAL + pid * N + cols, db, mask=col_ok)


# ------------------------------------------------------------ launch configurations
# Plain-Python integer helpers for the host side: triton.cdiv and triton.next_power_of_2
# are JIT functions, microseconds a call on the launch-bound path.
def _cdiv(a, b):
    return -(-a // b)


def _pow2(n):
    return 1 << max(n - 1, 0).bit_length()


class LaunchConfig(NamedTuple):
    """How a LayerNorm kernel is launched: `rows` per tile (the forward's rows per
    program; the backward's rows per loop step), `num_warps`, and for the backward
    `programs_per_sm`, the programs launched per multiprocessor (each writes one row
    of fp32 dweight/dbias partial sums; the forward ignores it)."""

    rows: int
    num_warps: int
    programs_per_sm: int = 0


MIN_STEPS = 8  # the backward's least number of row tiles per program (see _layer_norm_bwd)
WIDTH_BUCKETS = (1024, 4096, 32768)  # a row of N features uses the first bucket >= next_pow2(N)

# (dtype, width bucket, "fwd" | "bwd") -> LaunchConfig. Picked per dtype and hidden
# size, never per token count, so a new batch reuses the compiled kernel. Change it
# through `override_launch_configs`, not by assignment. Untuned guesses (no GPU when
# written): `python benchmarks/bench_layer_norm.py --tune` sweeps them on a GPU.
LAUNCH_CONFIGS: dict[tuple[torch.dtype, int, str], LaunchConfig] = {
    # hidden <= 1024 (BERT base/large): several rows per program. One 16-bit row of 768
    # is 1.5 KiB; the old one-row programs reached 64 % of copy bandwidth in bf16 against
    # 97 % in fp32 (H200), presumably from too few bytes in flight (not yet measured).
    (torch.float16, 1024, "fwd"): LaunchConfig(4, 4),
    (torch.bfloat16, 1024, "fwd"): LaunchConfig(4, 4),
    (torch.float32, 1024, "fwd"): LaunchConfig(2, 4),
    # backward: as many programs as fit on an SM at once (one wave; each walks its rows):
    # the sm_90 build of (4 rows, 4 warps) 16-bit takes 164 registers a thread, 3 blocks
    # an SM; fp32's (2, 4) takes 96, 5 blocks (tests/kernels/compile_for_gpu.py).
    (torch.float16, 1024, "bwd"): LaunchConfig(4, 4, 3),
    (torch.bfloat16, 1024, "bwd"): LaunchConfig(4, 4, 3),
    (torch.float32, 1024, "bwd"): LaunchConfig(2, 4, 5),
    # wider rows: one per tile, 8 warps (as before the table)
    **{(dt, bucket, d): LaunchConfig(1, 8, 4 if d == "bwd" else 0)
       for dt in (torch.float16, torch.bfloat16, torch.float32) for bucket in (4096, 32768)
       for d in ("fwd", "bwd")},
}


def _launch_key(dtype, width, direction):
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"direction={direction!r}: expected 'fwd' or 'bwd'")
    block_n = _pow2(width)
    bucket = next((b for b in WIDTH_BUCKETS if block_n <= b), None)
    key = (dtype, bucket, direction)
    if key not in LAUNCH_CONFIGS:
        raise ValueError(f"no layer_norm launch config for {dtype}, width {width}: the Triton "
                         f"layer_norm runs fp16/bf16/fp32 rows of up to {WIDTH_BUCKETS[-1]} features")
    return key


def launch_config(dtype, width: int, direction: str) -> LaunchConfig:
    """The LaunchConfig of the LayerNorm kernel for this dtype (of x), row width and
    direction ("fwd" or "bwd")."""
    return LAUNCH_CONFIGS[_launch_key(dtype, width, direction)]


@contextmanager
def override_launch_configs(configs: dict):
    """Run the block with some LayerNorm launch configs replaced; restored on exit.

    `configs`: {(dtype, width, "fwd" | "bwd"): LaunchConfig or a tuple}; a width stands
    for its bucket (1024 covers 1..1024, 4096 up to 4096, 32768 beyond). For tuning
    sweeps and compile checks; not thread-safe (one table per process).

    >>> with override_launch_configs({(torch.bfloat16, 768, "fwd"): (8, 8)}):
    ...     layer_norm(x, w, b, residual=r)
    """
    new = {_launch_key(*key): LaunchConfig(*cfg) for key, cfg in configs.items()}
    for cfg in new.values():
        if cfg.rows < 1 or cfg.rows & (cfg.rows - 1) or cfg.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"{cfg}: rows must be a power of two, num_warps one of 1..32 (powers of two)")
    with patched(LAUNCH_CONFIGS, new):
        yield


# ------------------------------------------------------------------- host launchers
def _max_hidden(dtype):
    # A whole row lives in registers; past 64 KiB per row the kernel would spill
    # everything (the Triton LayerNorm tutorial's limit).
    return 65536 // dtype.itemsize


def _threshold(dropout_p):
    # the kernels drop an element when 31 random bits fall below p * 2**31
    return min(int(dropout_p * 2**31), 2**31 - 1)


def _block_n(n):
    # at least 4 lanes: the dropout draws one Philox call per 4 features
    return max(_pow2(n), 4)


@functools.cache
def _multi_processors(device_index):
    # asked once per device: the backward runs on the launch-bound path
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _rows(t, n):
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


def _layer_norm_fwd(x, weight, bias, eps, residual, dropout_p, seed, copy_dtype=None):
    """Runs the forward kernel on (M, N) rows; `seed` a (1,) int64 tensor on x's device
    (None without dropout). Returns (y, mean, rstd, y cast to `copy_dtype` or None)."""
    M, N = x.shape
    out_dtype = _out_dtype(x, residual)
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    y_copy = torch.empty((M, N), dtype=copy_dtype, device=x.device) if copy_dtype is not None else None
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd, y_copy
    cfg = launch_config(x.dtype, N, "fwd")
    r = residual if residual is not None else x  # any valid pointer; never read
    seed = seed if seed is not None else x       # the same: read only with dropout
    _layer_norm_fwd_kernel[(_cdiv(M, cfg.rows),)](
        x, r, weight, bias, y, y_copy if y_copy is not None else y, mean, rstd, seed,
        x.stride(0), r.stride(0), y.stride(0), M, N, eps, dropout_p, _threshold(dropout_p),
        ROWS=cfg.rows, BLOCK_N=_block_n(N), HAS_RESIDUAL=residual is not None, DROPOUT=dropout_p > 0.0,
        STORE_COPY=y_copy is not None, num_warps=cfg.num_warps)
    return y, mean, rstd, y_copy


def _stores_dresidual(need_dresidual, dropout_p, x_dtype, residual_dtype):
    # Without dropout d(residual) equals dx: one tensor serves both, when they share a dtype.
    return need_dresidual and (dropout_p > 0.0 or residual_dtype != x_dtype)


def _layer_norm_bwd(dy, x, weight, residual, mean, rstd, dropout_p, seed, need_dresidual, dy_copy=None):
    """Runs the backward kernel; `dy_copy`, the gradient of the forward's copy, adds to
    dy. Returns (dx, dweight, dbias, dresidual or None); the dresidual is dx itself
    where `_stores_dresidual` says it equals dx."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    store_dr = _stores_dresidual(need_dresidual, dropout_p, x.dtype,
                                 residual.dtype if residual is not None else None)
    dr = torch.empty((M, N), dtype=residual.dtype, device=x.device) if store_dr else dx
    if M == 0:
        zeros = torch.zeros_like(weight)
        return dx, zeros, zeros.clone(), (dr if need_dresidual else None)
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    if dy_copy is not None and dy_copy.stride(-1) != 1:
        dy_copy = dy_copy.contiguous()
    cfg = launch_config(x.dtype, N, "bwd")
    if x.is_cuda:
        programs = _multi_processors(x.device.index if x.device.index is not None
                                     else torch.cuda.current_device()) * cfg.programs_per_sm
        # at least MIN_STEPS tiles per program, so that on small batches the fp32 partial
        # sums (programs x N, written then summed) stay a few % of the row traffic
        programs = min(programs, _cdiv(M, MIN_STEPS * cfg.rows))
    else:
        programs = 8  # the interpreter runs programs one by one: few and long is fastest
    programs = max(min(programs, _cdiv(M, cfg.rows)), 1)
    rows_per_program = cfg.rows * _cdiv(_cdiv(M, programs), cfg.rows)
    programs = _cdiv(M, rows_per_program)
    # dweight's and dbias's partial sums in one tensor: one allocation, one reduction. Rows
    # rounded up to a multiple of 4 keep partial[1] 16-byte aligned whatever the batch (Triton
    # specializes on pointer alignment: an odd offset would compile a second kernel).
    partial = torch.empty((2, _cdiv(programs, 4) * 4, N), dtype=torch.float32, device=x.device)
    r = residual if residual is not None else x
    seed = seed if seed is not None else x
    dyc = dy_copy if dy_copy is not None else dy
    _layer_norm_bwd_kernel[(programs,)](
        dy, dyc, x, r, weight, mean, rstd, dx, dr, partial[0], partial[1], seed,
        dy.stride(0), dyc.stride(0), x.stride(0), r.stride(0), M, N, dropout_p, _threshold(dropout_p),
        rows_per_program, ROWS=cfg.rows, BLOCK_N=_block_n(N), HAS_RESIDUAL=residual is not None,
        DROPOUT=dropout_p > 0.0, STORE_DR=store_dr, HAS_DY_COPY=dy_copy is not None, num_warps=cfg.num_warps)
    dw, db = partial[:, :programs].sum(1).to(weight.dtype).unbind(0)  # views of one (2, N) tensor
    return dx, dw, db, (dr if need_dresidual else None)


# The launchers as custom ops, for torch.compile: Dynamo puts them in the graph as
# opaque calls (shapes from the fake implementations) instead of breaking the graph at
# the Triton launch. Eager calls skip the dispatcher and run the launchers directly.
@torch.library.custom_op("bertcore::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       residual: Optional[torch.Tensor], eps: float, dropout_p: float,
                       seed: Optional[torch.Tensor], copy_dtype: Optional[torch.dtype]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, mean, rstd, y_copy = _layer_norm_fwd(x, weight, bias, eps, residual, dropout_p, seed, copy_dtype)
    return y, mean, rstd, (y_copy if y_copy is not None else x.new_empty((0,)))   # empty: no copy


@_layer_norm_fwd_op.register_fake
def _(x, weight, bias, residual, eps, dropout_p, seed, copy_dtype):
    M, N = x.shape
    out_dtype = _out_dtype(x, residual)
    return (x.new_empty((M, N), dtype=out_dtype), x.new_empty((M,), dtype=torch.float32),
            x.new_empty((M,), dtype=torch.float32),
            x.new_empty((M, N), dtype=copy_dtype) if copy_dtype is not None else x.new_empty((0,)))


@torch.library.custom_op("bertcore::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       residual: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
                       dropout_p: float, seed: Optional[torch.Tensor], need_dresidual: bool,
                       dy_copy: Optional[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db, dr = _layer_norm_bwd(dy, x, weight, residual, mean, rstd, dropout_p, seed, need_dresidual,
                                     dy_copy)
    # a custom op's outputs may not alias each other: an empty dresidual means "equals dx",
    # and dbias gets its own storage (the launcher returns two views of one tensor)
    return dx, dw, db.clone(), (dr if dr is not None and dr is not dx else dx.new_empty((0,)))


@_layer_norm_bwd_op.register_fake
def _(dy, x, weight, residual, mean, rstd, dropout_p, seed, need_dresidual, dy_copy):
    M, N = x.shape
    store_dr = _stores_dresidual(need_dresidual, dropout_p, x.dtype,
                                 residual.dtype if residual is not None else None)
    dr = x.new_empty((M, N), dtype=residual.dtype) if store_dr else x.new_empty((0,))
    return x.new_empty((M, N)), weight.new_empty((N,)), weight.new_empty((N,)), dr


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, dropout_p, seed, copy_dtype):
        shape, N = x.shape, x.shape[-1]
        x2 = _rows(x, N)
        r2 = _rows(residual, N) if residual is not None else None
        if torch.compiler.is_compiling():
            y, mean, rstd, y_copy = torch.ops.bertcore.layer_norm_fwd(x2, weight, bias, r2, eps, dropout_p, seed,
                                                                      copy_dtype)
        else:
            y, mean, rstd, y_copy = _layer_norm_fwd(x2, weight, bias, eps, r2, dropout_p, seed, copy_dtype)
        ctx.save_for_backward(x2, weight, r2, mean, rstd, seed)
        ctx.args = (dropout_p, shape)
        ctx.set_materialize_grads(False)   # an unused output's gradient stays None, not zeros to add
        if copy_dtype is None:
            return y.view(shape)
        return y.view(shape), y_copy.view(shape)

    @staticmethod
    def backward(ctx, dy, dy_copy=None):
        x2, weight, r2, mean, rstd, seed = ctx.saved_tensors
        dropout_p, shape = ctx.args
        need_dr = ctx.needs_input_grad[3]
        if dy is None:   # only the copy was used; the kernel reads either dtype
            dy, dy_copy = dy_copy, None
        dy2 = _rows(dy, x2.shape[1])
        dyc2 = _rows(dy_copy, x2.shape[1]) if dy_copy is not None else None
        if torch.compiler.is_compiling():
            dx, dw, db, dr = torch.ops.bertcore.layer_norm_bwd(dy2, x2, weight, r2, mean, rstd,
                                                               dropout_p, seed, need_dr, dyc2)
            if need_dr and not _stores_dresidual(need_dr, dropout_p, x2.dtype, r2.dtype):
                dr = dx
        else:
            dx, dw, db, dr = _layer_norm_bwd(dy2, x2, weight, r2, mean, rstd, dropout_p, seed, need_dr, dyc2)
        dr = dr.view(shape) if need_dr else None
        return dx.view(shape), dw, db, dr, None, None, None, None


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def layer_norm(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, seed=None, backend="auto",
               copy_dtype=None):
    """LayerNorm(dropout(x) + residual) over the last dimension, in one pass on a GPU.

    x, residual: (..., hidden); weight, bias: (hidden,). `dropout_p` applies to x
    only (BERT's sub-layer output); `seed` (an int) makes it repeatable. Without one,
    the Triton backend draws a fresh seed on the device each call (`rng.next_seed`:
    no host sync, fresh in each CUDA-graph replay) and the torch backend uses torch's
    generator; either way `torch.manual_seed` makes runs repeatable. The same seed
    gives the same mask within one backend, not across backends.
    `backend`: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".
    The Triton backend takes hidden sizes up to 16384 (fp32) / 32768 (fp16, bf16)
    and raises beyond; the torch backend has no limit.
    `copy_dtype`: also return the output cast to this dtype, `(y, y.to(copy_dtype))`.
    Under autocast the output is fp32 (the residual stream) and the next matrix
    product reads it in bf16/fp16: the Triton kernel writes that copy in the same pass
    instead of a separate cast re-reading y, and its backward adds both gradients.
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
    if not eps >= 0.0:  # also NaN; a negative eps gives sqrt(var + eps) of a negative: NaN rows
        raise ValueError(f"layer_norm eps must be >= 0, got {eps}")
    if not x.is_floating_point() or (residual is not None and not residual.is_floating_point()):
        raise TypeError(f"layer_norm expects floating-point x and residual; got x {x.dtype}, residual "
                        f"{None if residual is None else residual.dtype}")
    if resolve(backend, x) == "triton":
        # The kernels read weight[i] and bias[i] at base + i: make strided views (a column
        # of a larger tensor) contiguous; a no-op for a parameter.
        weight, bias = weight.contiguous(), bias.contiguous()
        if x.dtype not in _TRITON_DTYPES or (residual is not None and residual.dtype not in _TRITON_DTYPES):
            raise TypeError(f"the Triton layer_norm runs fp16, bf16 and fp32; got x {x.dtype}, residual "
                            f"{None if residual is None else residual.dtype}; use backend='torch'")
        if x.shape[-1] > _max_hidden(x.dtype):
            raise ValueError(f"the Triton layer_norm holds a row in registers and takes hidden sizes up "
                             f"to {_max_hidden(x.dtype)} for {x.dtype}; got {x.shape[-1]}. "
                             f"Use backend='torch' for wider rows")
        if dropout_p == 0.0:
            seed_t = None  # the kernels read the seed only with dropout
        elif seed is None:
            seed_t = device_seed(x)
        else:
            seed_t = seed_tensor(seed, x.device)
        out_dtype = _out_dtype(x, residual)
        if copy_dtype is not None and copy_dtype not in _TRITON_DTYPES:
            raise TypeError(f"copy_dtype must be one of {_TRITON_DTYPES}, got {copy_dtype}")
        copy = copy_dtype if copy_dtype != out_dtype else None   # the output is its own copy
        y = _LayerNormFunction.apply(x, weight, bias, residual, float(eps), float(dropout_p), seed_t, copy)
        if copy_dtype is None:
            return y
        return y if copy is not None else (y, y)
    generator = None
    if dropout_p > 0.0 and seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed) % 2**64)  # any int, as in attention
    y = layer_norm_ref(x, weight, bias, eps, residual, dropout_p, generator=generator)
    return y if copy_dtype is None else (y, y.to(copy_dtype))
