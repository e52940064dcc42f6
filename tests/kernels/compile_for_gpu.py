"""Compiles every Triton kernel for an sm_90 GPU without one (Triton's own compiler
and bundled ptxas), so a CPU-only machine still catches what the interpreter lets
through: constructs the compiler rejects, type errors, shared memory overruns. The
LayerNorm and bias-GELU kernels are compiled as a real launch on aligned tensors would
be (pointers and row strides carry the JIT's divisibility-by-16 hint), and the 16-bit
LayerNorm rows must load in 16-byte vectors.

Run as a script in a process without TRITON_INTERPRET (the test does that):
    python tests/kernels/compile_for_gpu.py [--all | --ptx-counts | --registers]
Default: the model's configuration (attention fp16, head_dim 64, dropout on; LayerNorm
fp16 and bf16 at hidden 768; bias-GELU bf16 at 3072); --all sweeps dtypes, head dims
and widths (minutes). --ptx-counts prints the PTX instruction count of the bf16
attention (head_dim 64, each length class) and LayerNorm (hidden 768) kernels with and
without dropout: a CPU-side measure of what a change adds to or takes from a kernel,
for when no GPU is there to time it (the dropout Philox changes were judged by it),
and the attention forward's layout conversions with and without dropout.
--registers prints the registers a thread and the bytes it spills (Triton's own ptxas,
`-v`) for the bf16 attention kernels at head_dim 64 with each keep-mask source, and the
LayerNorm kernels at hidden 768: a spilling tile is slow whatever its sweep says.
"""
import importlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

A = importlib.import_module("bertcore_kernels.attention")
B = importlib.import_module("bertcore_kernels.attention_bwd")
P = importlib.import_module("bertcore_kernels.attention_philox")
L = importlib.import_module("bertcore_kernels.layer_norm")
G = importlib.import_module("bertcore_kernels.bias_gelu")
TARGET = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024  # H100 per-block maximum
TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def build(fn, types, constexprs, num_warps, num_stages=2, aligned=()):
    """Compiles fn; scalar args not in `types` are i32; `aligned` args get the JIT's
    divisible-by-16 hint. Returns the compiled kernel."""
    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned if n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, attrs=attrs,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))
    shared = kernel.metadata.shared
    assert shared <= SHARED_LIMIT, f"{fn.__name__}: {shared} bytes of shared memory > {SHARED_LIMIT}"
    return kernel


def _vector_loads(kernel):
    return sum(".v4.b32" in line for line in kernel.asm["ptx"].splitlines() if "ld.global" in line)


def attention_kernels(dtype, head_dim, dropout, mask="redraw"):
    """Compiles the attention kernels of every length class; returns {(direction, length
    class): kernel}. `mask`: where dropout's keep-mask comes from (`LaunchConfig.dropout_mask`)."""
    t, block_d, prec = TY[dtype], A._block_d(head_dim), A._dot_precision(dtype)
    scalars = {"LSE": "*fp32", "DELTA": "*fp32", "DQ_ACC": "*fp32", "CU_SEQLENS": "*i32", "ORDER": "*i32",
               "SEED": "*i64", "KEEP_BITS": "*i32", "sm_scale": "fp32", "dropout_p": "fp32"}
    flags = dict(BLOCK_D=block_d, DROPOUT=dropout, DOT_PRECISION=prec)
    bwd_flags = dict(flags, KEEP_FROM_BITS=mask != "redraw")  # the backward reads bits whenever they exist
    grads = {n: "*" + t for n in ("Q", "K", "V", "DO", "DQ", "DK", "DV")}
    kernels = {}
    for length in A.LENGTH_CLASSES:  # each length class has its own tiles
        bm, bn, warps, stages, _ = A.launch_config(dtype, head_dim, "fwd", length)
        kernels["fwd", length] = build(A._attention_fwd_kernel, {**{n: "*" + t for n in "QKVO"}, **scalars},
                                       dict(BLOCK_M=bm, BLOCK_N=bn, MASK=mask, **flags), warps, stages)
        bm, bn, warps, stages, _ = A.launch_config(dtype, head_dim, "bwd", length)
        kernels["bwd", length] = build(A._attention_bwd_kernel, {**grads, **scalars},
                                       dict(BLOCK_M=bm, BLOCK_N=bn, **bwd_flags), warps, stages)
        block, _, warps, stages, _ = A.launch_config(dtype, head_dim, "bwd_det", length)
        kernels["bwd_det", length] = build(A._attention_bwd_det_kernel, {**grads, **scalars},
                                           dict(BLOCK=block, **bwd_flags), warps, stages)
    build(B._attention_bwd_preprocess_kernel, {"O": "*" + t, "DO": "*" + t, "DELTA": "*fp32", "DQ_ACC": "*fp32"},
          dict(BLOCK_R=64, BLOCK_D=block_d, ZERO_DQ=True), 4)
    if mask == "prebuilt":
        kernels["keep_bits"] = build(P._keep_bits_kernel, {"KEEP_BITS": "*i32", "CU_SEQLENS": "*i32", "SEED": "*i64"},
                                     dict(BLOCK_R=32, BLOCK_W=4), 4)
    print(f"attention {t} d={head_dim} dropout={dropout} mask={mask}: shared memory (B) "
          + ", ".join(f"{' '.join(key) if isinstance(key, tuple) else key} {k.metadata.shared}"
                      for key, k in kernels.items()), flush=True)
    return kernels


def layer_norm_kernels(dtype, width, residual, dropout, copy=False):
    """`copy`: with the bf16 copy of the output (and its gradient), as autocast runs it."""
    t, block_n = TY[dtype], L._block_n(width)
    common = {"MEAN": "*fp32", "RSTD": "*fp32", "eps": "fp32", "dropout_p": "fp32", "SEED": "*i64",
              "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", "Y_COPY": "*bf16", "DY_COPY": "*bf16"}
    flags = dict(BLOCK_N=block_n, HAS_RESIDUAL=residual, DROPOUT=dropout)
    # the JIT's hints for aligned tensors of an aligned width (768, 1024, ...)
    aligned = ("X", "R", "W", "B", "Y", "Y_COPY", "DY", "DY_COPY", "DX", "DR", "MEAN", "RSTD", "DW_PARTIAL",
               "DB_PARTIAL", "stride_x", "stride_r", "stride_y", "stride_dy", "stride_dyc", "N") \
        if width % 16 == 0 else ()
    fwd_cfg, bwd_cfg = L.launch_config(dtype, width, "fwd"), L.launch_config(dtype, width, "bwd")
    fn = L._layer_norm_fwd_kernel
    fwd = build(fn, {**{n: "*" + t for n in ("X", "R", "W", "B", "Y")}, **common},
                {**flags, "ROWS": fwd_cfg.rows, "STORE_COPY": copy}, fwd_cfg.num_warps, aligned=aligned)
    fn = L._layer_norm_bwd_kernel
    bwd = build(fn, {**{n: "*" + t for n in ("DY", "X", "R", "W", "DX", "DR")}, **common},
                {**flags, "ROWS": bwd_cfg.rows, "STORE_DR": dropout and residual, "HAS_DY_COPY": copy},
                bwd_cfg.num_warps, aligned=aligned)
    print(f"layer_norm {t} N={width} residual={residual} dropout={dropout} copy={copy}: shared fwd "
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
                         aligned=aligned))
    print(f"bias_gelu {t} N={width}: 16-byte loads fwd {_vector_loads(out[0])}, bwd {_vector_loads(out[1])}",
          flush=True)
    return out


def ptx_instructions(kernel) -> int:
    return sum(1 for line in kernel.asm["ptx"].splitlines() if line.strip() and line.strip()[0] not in "/.{}$")


def layout_conversions(kernel) -> int:
    """How often the kernel moves a tensor between thread layouts (through shared memory
    or shuffles): its `convert_layout` operations in Triton's GPU IR."""
    return kernel.asm["ttgir"].count("ttg.convert_layout")


def ptx_counts():
    """PTX instructions of the bf16 kernels BERT runs, without and with dropout (for the
    attention, with each source of the keep-mask: `LaunchConfig.dropout_mask`)."""
    variants = {"none": (False, "redraw"), **{mask: (True, mask) for mask in A.DROPOUT_MASKS}}
    attention = {name: attention_kernels(torch.bfloat16, 64, *flags) for name, flags in variants.items()}
    for length in A.LENGTH_CLASSES:
        counts = {name: [ptx_instructions(kernels[d, length]) for d in ("fwd", "bwd")]
                  for name, kernels in attention.items()}
        moves = [layout_conversions(attention[name]["fwd", length]) for name in ("none", "redraw")]
        print(f"attention bf16 d=64 {length}: fwd {counts['none'][0]} / {counts['redraw'][0]} with dropout, "
              f"mask saved {counts['saved'][0]}, prebuilt {counts['prebuilt'][0]}; "
              f"bwd {counts['none'][1]} / {counts['redraw'][1]}, from bits {counts['saved'][1]}; "
              f"layout conversions: {moves[0]} in the forward, {moves[1]} with dropout", flush=True)
    print(f"attention keep-bits kernel (prebuilt mask): {ptx_instructions(attention['prebuilt']['keep_bits'])}",
          flush=True)
    counts = {}
    for dropout in (False, True):
        fwd, bwd = layer_norm_kernels(torch.bfloat16, 768, True, dropout)
        counts[dropout] = ptx_instructions(fwd), ptx_instructions(bwd)
    print(f"layer_norm bf16 N=768: fwd {counts[False][0]} / {counts[True][0]} with dropout, "
          f"bwd {counts[False][1]} / {counts[True][1]}", flush=True)


def registers(kernel) -> tuple[int, int]:
    """(registers a thread, bytes it spills) of a compiled kernel, from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas
    try:
        ptxas = get_ptxas(TARGET.arch).path
    except TypeError:  # Triton before 3.7 takes no arch
        ptxas = get_ptxas().path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([ptxas, f"-arch=sm_{TARGET.arch}a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    return (int(re.search(r"Used (\d+) registers", log).group(1)),
            int(re.search(r"(\d+) bytes spill stores", log).group(1)))


def register_counts():
    """Registers and spills of the bf16 kernels BERT runs (see --registers)."""
    for mask in A.DROPOUT_MASKS:
        kernels = attention_kernels(torch.bfloat16, 64, True, mask=mask)
        print(f"attention bf16 d=64 mask={mask}: " + "; ".join(
            f"{' '.join(key) if isinstance(key, tuple) else key} %d registers, %d B spilled" % registers(k)
            for key, k in kernels.items()), flush=True)
    fwd, bwd = layer_norm_kernels(torch.bfloat16, 768, True, True, copy=True)
    print("layer_norm bf16 N=768 dropout: fwd %d registers, %d B spilled; " % registers(fwd)
          + "bwd %d registers, %d B spilled" % registers(bwd), flush=True)


def main(sweep):
    if not sweep:
        attention_kernels(torch.float16, 64, True)
        attention_kernels(torch.float16, 64, True, mask="saved")
        attention_kernels(torch.float16, 64, True, mask="prebuilt")
        layer_norm_kernels(torch.float16, 768, True, True)
        fwd, _ = layer_norm_kernels(torch.bfloat16, 768, True, True)
        assert _vector_loads(fwd) > 0, "the bf16 LayerNorm forward does not load 16-byte vectors"
        layer_norm_kernels(torch.float32, 768, True, True, copy=True)   # the residual stream under autocast
        bias_gelu_kernels(torch.bfloat16, 3072)
    else:
        for dtype in TY:
            for head_dim in (32, 64, 128):
                for dropout in (False, True):
                    attention_kernels(dtype, head_dim, dropout)
                for mask in ("saved", "prebuilt"):
                    attention_kernels(dtype, head_dim, True, mask=mask)
            for width in (384, 768, 1023, 4096, 8192, L._max_hidden(dtype)):
                layer_norm_kernels(dtype, width, True, True)
                layer_norm_kernels(dtype, width, False, False)
                layer_norm_kernels(dtype, width, True, True, copy=True)
            for width in (1536, 3072, 1000):
                bias_gelu_kernels(dtype, width)
    build(P._dropout_mask_kernel, {"MASK": "*u8", "SEED": "*i64"}, dict(BLOCK_M=32, BLOCK_N=32), 4)
    print("compiled", flush=True)


if __name__ == "__main__":
    if "--ptx-counts" in sys.argv:
        ptx_counts()
    elif "--registers" in sys.argv:
        register_counts()
    else:
        main("--all" in sys.argv)
