"""The feed-forward's first activation: GELU(x + bias) with the exact (erf) GELU that
BERT uses, where x is the intermediate dense's product without its bias.

One pass each way instead of torch's separate bias add and GELU over the (T, 4H)
tensor: the forward reads x and writes the activation; the backward reads dy and x
(the saved pre-activation input, not the output) and writes dx, summing d(bias) in
fp32 per program on the way (a (programs, N) partial sum, then one `.sum(0)`:
deterministic, no atomics).

The file reads: the PyTorch reference (also the CPU path), the Triton kernels, the
launch configuration, the host launchers and their custom ops (for
`torch.compile`), the autograd Function, and the public `bias_gelu`.
"""
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .dispatch import patched, resolve, tl, triton
from .layer_norm import _cdiv, _multi_processors, _pow2  # one cached device query for both ops


def bias_gelu_ref(x, bias, upcast=False):
    """GELU(x + bias) (exact erf GELU) in plain PyTorch; differentiable. The result has
    x's dtype (bias is cast to it, as a Linear's bias is under autocast); `upcast`
    computes in fp32 for half inputs."""
    if upcast and x.dtype in (torch.float16, torch.bfloat16):
        return F.gelu(x.float() + bias.float()).to(x.dtype)
    return F.gelu(x + bias.to(x.dtype))


# --------------------------------------------------------------------------- Triton
@triton.jit
def _gelu_parts(h):
    # (cdf, pdf) of the standard normal at h, fp32: GELU(h) = h * cdf, GELU'(h) = cdf + h * pdf
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
    return cdf, pdf


@triton.jit(do_not_specialize=["M"])
def _bias_gelu_fwd_kernel(
    X,  # (M, N) pre-activation input (x @ W1ᵀ, no bias); row stride given, unit column stride
    B,  # (N,) bias, any float dtype (read in fp32)
    Y,  # (M, N) out, contiguous, x's dtype: GELU(x + bias)
    stride_x, M, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    h = x + b[None, :]
    cdf, _ = _gelu_parts(h)
    tl.store(Y + rows64 * N + cols[None, :], (h * cdf).to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _bias_gelu_bwd_kernel(
    DY,          # (M, N) gradient of the output, contiguous
    X,           # (M, N) the forward's pre-activation input; row stride given
    B,           # (N,) bias (read in fp32)
    DX,          # (M, N) out, contiguous, x's dtype: gradient of x (= of x + bias)
    DB_PARTIAL,  # (programs along M, N) fp32 out: this program's share of d(bias)
    stride_x, M, N, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # program (i, j) walks rows [i * rows_per_program, ...) of column block j, BLOCK_M
    # rows at a time, and writes its fp32 column sums of dx to DB_PARTIAL[i].
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid_m * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64 * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = x + b[None, :]
        cdf, pdf = _gelu_parts(h)
        dh = tl.where(mask, dy * (cdf + h * pdf), 0.0)
        db += tl.sum(dh, axis=0)
        tl.store(DX + rows64 * N + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)
    tl.store(DB_PARTIAL + pid_m * N + cols, db, mask=col_ok)


# ------------------------------------------------------------- launch configuration
class LaunchConfig(NamedTuple):
    """Tile (`block_m` rows x `block_n` columns) and warps of a bias-GELU launch; the
    backward also launches about `programs_per_sm` programs per multiprocessor (each
    writes one row of fp32 d(bias) partial sums)."""

    block_m: int
    block_n: int
    num_warps: int
    programs_per_sm: int = 0


# "fwd" | "bwd" -> LaunchConfig; elementwise, so one entry per direction. Untuned
# guesses (no GPU when written); `python benchmarks/bench_layer_norm.py --tune` sweeps
# them. Change through `override_launch_configs`.
LAUNCH_CONFIGS: dict[str, LaunchConfig] = {
    "fwd": LaunchConfig(8, 512, 4),
    "bwd": LaunchConfig(8, 512, 4, 4),   # 102-128 registers on sm_90: 4 blocks an SM, one wave
}


@contextmanager
def override_launch_configs(configs: dict):
    """Run the block with {"fwd" | "bwd": LaunchConfig or tuple} replacing the table's
    entries (powers of two for the block sizes and warps); restored on exit."""
    new = {d: LaunchConfig(*cfg) for d, cfg in configs.items()}
    for d, cfg in new.items():
        if d not in ("fwd", "bwd"):
            raise ValueError(f"direction {d!r}: expected 'fwd' or 'bwd'")
        if any(v < 1 or v & (v - 1) for v in (cfg.block_m, cfg.block_n, cfg.num_warps)):
            raise ValueError(f"{cfg}: block_m, block_n and num_warps must be powers of two")
    with patched(LAUNCH_CONFIGS, new):
        yield


# ------------------------------------------------------------------- host launchers
def _rows(t, n):
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


def _bias_gelu_fwd(x, bias):
    """GELU(x + bias) on (M, N) rows; returns y, contiguous, x's dtype."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    cfg = LAUNCH_CONFIGS["fwd"]
    block_n = min(cfg.block_n, _pow2(N))
    _bias_gelu_fwd_kernel[(_cdiv(M, cfg.block_m), _cdiv(N, block_n))](
        x, bias, y, x.stride(0), M, N, BLOCK_M=cfg.block_m, BLOCK_N=block_n, num_warps=cfg.num_warps)
    return y


def _bias_gelu_bwd(dy, x, bias):
    """Returns (dx, dbias): dx in x's dtype, dbias in bias's dtype (summed in fp32)."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx, torch.zeros_like(bias)
    dy = dy if dy.is_contiguous() else dy.contiguous()
    cfg = LAUNCH_CONFIGS["bwd"]
    block_n = min(cfg.block_n, _pow2(N))
    col_blocks = _cdiv(N, block_n)
    if x.is_cuda:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        programs_m = max(_multi_processors(index) * cfg.programs_per_sm // col_blocks, 1)
    else:
        programs_m = 2  # the interpreter runs programs one by one: few and long is fastest
    programs_m = min(programs_m, _cdiv(M, cfg.block_m))
    rows_per_program = cfg.block_m * _cdiv(_cdiv(M, programs_m), cfg.block_m)
    programs_m = _cdiv(M, rows_per_program)
    db_partial = torch.empty((programs_m, N), dtype=torch.float32, device=x.device)
    _bias_gelu_bwd_kernel[(programs_m, col_blocks)](
        dy, x, bias, dx, db_partial, x.stride(0), M, N, rows_per_program,
        BLOCK_M=cfg.block_m, BLOCK_N=block_n, num_warps=cfg.num_warps)
    return dx, db_partial.sum(0).to(bias.dtype)


# The launchers as custom ops, for torch.compile (opaque graph nodes with fake
# implementations for shapes); eager calls run the launchers directly.
@torch.library.custom_op("bertcore::bias_gelu_fwd", mutates_args=())
def _bias_gelu_fwd_op(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _bias_gelu_fwd(x, bias)


@_bias_gelu_fwd_op.register_fake
def _(x, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("bertcore::bias_gelu_bwd", mutates_args=())
def _bias_gelu_bwd_op(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _bias_gelu_bwd(dy, x, bias)


@_bias_gelu_bwd_op.register_fake
def _(dy, x, bias):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


class _BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        shape = x.shape
        x2 = _rows(x, shape[-1])
        if torch.compiler.is_compiling():
            y = torch.ops.bertcore.bias_gelu_fwd(x2, bias)
        else:
            y = _bias_gelu_fwd(x2, bias)
        ctx.save_for_backward(x2, bias)  # the input, not the output: GELU' needs x + bias
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape)
        if torch.compiler.is_compiling():
            dx, db = torch.ops.bertcore.bias_gelu_bwd(dy2, x2, bias)
        else:
            dx, db = _bias_gelu_bwd(dy2, x2, bias)
        return dx.view(ctx.shape), db


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def bias_gelu(x, bias, backend="auto"):
    """GELU(x + bias) with the exact (erf) GELU, as BERT's intermediate layer computes
    it after `x @ W1ᵀ`; one pass forward and one backward on a GPU.

    x: (..., N); bias: (N,). The result has x's dtype (under autocast: the product's
    bf16/fp16; the bias is read in fp32). Gradients: x's in x's dtype, the bias's in
    its own dtype. `backend`: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".
    """
    if x.dim() == 0 or bias.shape != x.shape[-1:]:
        raise ValueError(f"bias_gelu needs x of shape (..., N) and bias of shape (N,); got x "
                         f"{tuple(x.shape)}, bias {tuple(bias.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"bias_gelu expects a floating-point x; got {x.dtype}")
    if resolve(backend, x) == "triton":
        if x.dtype not in _TRITON_DTYPES or bias.dtype not in _TRITON_DTYPES:
            raise TypeError(f"the Triton bias_gelu runs fp16, bf16 and fp32; got x {x.dtype}, bias "
                            f"{bias.dtype}; use backend='torch'")
        # The kernels read bias[i] at base + i: a strided view must be made contiguous.
        return _BiasGeluFunction.apply(x, bias.contiguous())
    return bias_gelu_ref(x, bias)
