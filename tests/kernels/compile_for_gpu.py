"""Compiles every Triton kernel for an sm_90 GPU without one (Triton's own compiler
and bundled ptxas), so a CPU-only machine still catches what the interpreter lets
through: constructs the compiler rejects, type errors, shared memory overruns.

Run as a script in a process without TRITON_INTERPRET (the test does that):
    python tests/kernels/compile_for_gpu.py [--all]
Default: the model's configuration (fp16, head_dim 64, dropout on); --all sweeps
dtypes, head dims and widths (minutes).
"""
import importlib
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

A = importlib.import_module("bertcore_kernels.attention")
B = importlib.import_module("bertcore_kernels.attention_bwd")
P = importlib.import_module("bertcore_kernels.attention_philox")
L = importlib.import_module("bertcore_kernels.layer_norm")
TARGET = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024  # H100 per-block maximum
TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def build(fn, types, constexprs, num_warps, num_stages=2):
    """Compiles fn; scalar args not in `types` are i32. Returns shared memory bytes."""
    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))
    shared = kernel.metadata.shared
    assert shared <= SHARED_LIMIT, f"{fn.__name__}: {shared} bytes of shared memory > {SHARED_LIMIT}"
    return shared


def attention_kernels(dtype, head_dim, dropout):
    t, block_d, prec = TY[dtype], A._block_d(head_dim), A._dot_precision(dtype)
    scalars = {"LSE": "*fp32", "DELTA": "*fp32", "DQ_ACC": "*fp32", "CU_SEQLENS": "*i32", "ORDER": "*i32",
               "SEED": "*i64", "sm_scale": "fp32", "dropout_p": "fp32"}
    flags = dict(BLOCK_D=block_d, DROPOUT=dropout, DOT_PRECISION=prec)
    grads = {n: "*" + t for n in ("Q", "K", "V", "DO", "DQ", "DK", "DV")}
    shared = {}
    for length in A.LENGTH_CLASSES:  # each length class has its own tiles
        bm, bn, warps, stages = A.launch_config(dtype, head_dim, "fwd", length)
        shared["fwd", length] = build(A._attention_fwd_kernel, {**{n: "*" + t for n in "QKVO"}, **scalars},
                                      dict(BLOCK_M=bm, BLOCK_N=bn, **flags), warps, stages)
        bm, bn, warps, stages = A.launch_config(dtype, head_dim, "bwd", length)
        shared["bwd", length] = build(A._attention_bwd_kernel, {**grads, **scalars},
                                      dict(BLOCK_M=bm, BLOCK_N=bn, **flags), warps, stages)
        block, _, warps, stages = A.launch_config(dtype, head_dim, "bwd_det", length)
        shared["bwd_det", length] = build(A._attention_bwd_det_kernel, {**grads, **scalars},
                                          dict(BLOCK=block, **flags), warps, stages)
    build(B._attention_bwd_preprocess_kernel, {"O": "*" + t, "DO": "*" + t, "DELTA": "*fp32", "DQ_ACC": "*fp32"},
          dict(BLOCK_R=64, BLOCK_D=block_d, ZERO_DQ=True), 4)
    print(f"attention {t} d={head_dim} dropout={dropout}: shared memory (B) "
          + ", ".join(f"{d} {cls} {n}" for (d, cls), n in shared.items()), flush=True)


def layer_norm_kernels(dtype, width, residual, dropout):
    t, block_n = TY[dtype], L._block_n(width)
    stats = {"MEAN": "*fp32", "RSTD": "*fp32", "eps": "fp32", "dropout_p": "fp32", "SEED": "*i64",
             "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32"}
    flags = dict(BLOCK_N=block_n, HAS_RESIDUAL=residual, DROPOUT=dropout)
    fwd, bwd = L.launch_config(dtype, width, "fwd"), L.launch_config(dtype, width, "bwd")
    build(L._layer_norm_fwd_kernel, {**{n: "*" + t for n in ("X", "R", "W", "B", "Y")}, **stats},
          {**flags, "ROWS": fwd.rows}, fwd.num_warps)
    build(L._layer_norm_bwd_kernel, {**{n: "*" + t for n in ("DY", "X", "R", "W", "DX", "DR")}, **stats},
          {**flags, "ROWS": bwd.rows, "STORE_DR": dropout and residual}, bwd.num_warps)
    print(f"layer_norm {t} N={width} residual={residual} dropout={dropout}: ok", flush=True)


def main(sweep):
    if not sweep:
        attention_kernels(torch.float16, 64, True)
        layer_norm_kernels(torch.float16, 768, True, True)
    else:
        for dtype in TY:
            for head_dim in (32, 64, 128):
                for dropout in (False, True):
                    attention_kernels(dtype, head_dim, dropout)
            for width in (384, 1023, 8192, L._max_hidden(dtype)):
                layer_norm_kernels(dtype, width, True, True)
                layer_norm_kernels(dtype, width, False, False)
    build(P._dropout_mask_kernel, {"MASK": "*u8", "SEED": "*i64"}, dict(BLOCK_M=32, BLOCK_N=32), 4)
    print("compiled", flush=True)


if __name__ == "__main__":
    main("--all" in sys.argv)
