"""Compiles the LayerNorm and bias-GELU Triton kernels for an sm_90 GPU without one
(Triton's compiler and bundled ptxas), as a real launch on aligned tensors would: the
pointers and the row strides carry the divisibility-by-16 hint the JIT gives them.
Catches what the interpreter lets through (constructs the compiler rejects, shared
memory overruns) and checks that the 16-bit LayerNorm rows load in 16-byte vectors.

Run in a process without TRITON_INTERPRET (test_ln_compile_for_gpu.py does that):
    python tests/kernels/ln_compile_for_gpu.py [--all]
Default: the model's configuration (bf16, hidden 768, intermediate 3072, dropout
on); --all sweeps dtypes and widths (minutes).
"""
import importlib
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

L = importlib.import_module("bertcore_kernels.layer_norm")
G = importlib.import_module("bertcore_kernels.bias_gelu")
TARGET = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024  # H100 per-block maximum
TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def build(fn, types, constexprs, num_warps, aligned=()):
    """Compiles fn; scalar args not in `types` are i32; `aligned` args get the JIT's
    divisible-by-16 hint. Returns the compiled kernel."""
    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=sig, attrs=attrs,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps))
    shared = kernel.metadata.shared
    assert shared <= SHARED_LIMIT, f"{fn.__name__}: {shared} bytes of shared memory > {SHARED_LIMIT}"
    return kernel


def _vector_loads(kernel):
    return sum(".v4.b32" in line for line in kernel.asm["ptx"].splitlines() if "ld.global" in line)


def layer_norm_kernels(dtype, width, residual, dropout):
    t, block_n = TY[dtype], L._block_n(width)
    common = {"MEAN": "*fp32", "RSTD": "*fp32", "eps": "fp32", "dropout_p": "fp32", "SEED": "*i64",
              "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32"}
    flags = dict(BLOCK_N=block_n, HAS_RESIDUAL=residual, DROPOUT=dropout)
    # the JIT's hints for aligned tensors of an aligned width (768, 1024, ...)
    aligned = ("X", "R", "W", "B", "Y", "DY", "DX", "DR", "MEAN", "RSTD", "DW_PARTIAL", "DB_PARTIAL",
               "stride_x", "stride_r", "stride_y", "stride_dy", "N") if width % 16 == 0 else ()
    fwd_cfg, bwd_cfg = L.launch_config(dtype, width, "fwd"), L.launch_config(dtype, width, "bwd")
    fn = L._layer_norm_fwd_kernel
    fwd = build(fn, {**{n: "*" + t for n in ("X", "R", "W", "B", "Y")}, **common},
                {**flags, "ROWS": fwd_cfg.rows}, fwd_cfg.num_warps, [a for a in aligned if a in fn.arg_names])
    fn = L._layer_norm_bwd_kernel
    bwd = build(fn, {**{n: "*" + t for n in ("DY", "X", "R", "W", "DX", "DR")}, **common},
                {**flags, "ROWS": bwd_cfg.rows, "STORE_DR": dropout and residual}, bwd_cfg.num_warps,
                [a for a in aligned if a in fn.arg_names])
    print(f"layer_norm {t} N={width} residual={residual} dropout={dropout}: shared fwd "
          f"{fwd.metadata.shared} B, bwd {bwd.metadata.shared} B; 16-byte loads fwd {_vector_loads(fwd)}, "
          f"bwd {_vector_loads(bwd)}", flush=True)
    return fwd, bwd


def bias_gelu_kernels(dtype, width):
    t = TY[dtype]
    aligned = ("X", "B", "Y", "DY", "DX", "DB_PARTIAL", "stride_x", "N") if width % 16 == 0 else ()
    out = []
    for fn, direction, ptrs in ((G._bias_gelu_fwd_kernel, "fwd", ("X", "Y")),
                                (G._bias_gelu_bwd_kernel, "bwd", ("DY", "X", "DX"))):
        cfg = G.LAUNCH_CONFIGS[direction]
        block_n = min(cfg.block_n, triton.next_power_of_2(width))
        types = {**{n: "*" + t for n in ptrs}, "B": "*fp32", "DB_PARTIAL": "*fp32"}
        out.append(build(fn, types, dict(BLOCK_M=cfg.block_m, BLOCK_N=block_n), cfg.num_warps,
                         [a for a in aligned if a in fn.arg_names]))
    print(f"bias_gelu {t} N={width}: 16-byte loads fwd {_vector_loads(out[0])}, bwd {_vector_loads(out[1])}",
          flush=True)
    return out


def main(sweep):
    if not sweep:
        fwd, _ = layer_norm_kernels(torch.bfloat16, 768, True, True)
        assert _vector_loads(fwd) > 0, "the bf16 LayerNorm forward does not load 16-byte vectors"
        bias_gelu_kernels(torch.bfloat16, 3072)
    else:
        for dtype in TY:
            for width in (384, 768, 1023, 4096, L._max_hidden(dtype)):
                layer_norm_kernels(dtype, width, True, True)
                layer_norm_kernels(dtype, width, False, False)
            for width in (1536, 3072, 1000):
                bias_gelu_kernels(dtype, width)
    print("compiled", flush=True)


if __name__ == "__main__":
    main("--all" in sys.argv)
