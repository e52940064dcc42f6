"""Helpers for the kernel tests: the tolerance rule and small input builders.

The rule (DESIGN.md): Triton's error against an fp64 PyTorch computation may be
at most twice the error of PyTorch itself run in the same dtype, plus a small
atol scaled to the reference's magnitude.
"""
import pytest
import torch

# Where the Triton-backend tests run: the GPU where there is one, else the CPU in
# Triton's interpreter (conftest sets TRITON_INTERPRET=1 only without CUDA). With
# CUDA present the kernels are compiled, and compiled kernels cannot read CPU tensors.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_cuda(fn):
    """Marks a GPU-only test: tagged `gpu`, skipped cleanly without CUDA."""
    return pytest.mark.gpu(_skip_without_cuda(fn))


# Per-dtype slack on top of 2x PyTorch's error: about one unit in the last place at 1.0.
ATOL = {torch.float32: 1e-6, torch.float16: 5e-4, torch.bfloat16: 4e-3}


def max_err(x, ref):
    if x.numel() == 0:
        return 0.0
    return (x.detach().double() - ref.detach().double()).abs().max().item()


def assert_rule(name, triton_out, torch_out, ref64, dtype):
    """Triton's max error vs fp64 <= 2 x PyTorch's (same dtype) + atol. Returns both errors."""
    assert triton_out.shape == ref64.shape, f"{name}: shape {tuple(triton_out.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(triton_out).all(), f"{name}: non-finite values from Triton"
    e_tri, e_torch = max_err(triton_out, ref64), max_err(torch_out, ref64)
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    atol = ATOL[dtype] * scale
    assert e_tri <= 2 * e_torch + atol, (
        f"{name} ({dtype}): Triton error {e_tri:.3e} > 2 x PyTorch error {e_torch:.3e} + atol {atol:.1e}")
    return e_tri, e_torch


def cu_seqlens_of(lengths, device=DEVICE):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def compile_key(kernel, args, constexprs):
    """What Triton's JIT compiles a kernel anew for, computed as it does on a GPU from one
    launch's arguments: an int (unless in do_not_specialize) by being 1 and by dividing
    by 16, a pointer by its 16-byte alignment, a constexpr by its value. Interpreter only
    (the kernel's `kwargs` hold its do_not_specialize there)."""
    skip = set(kernel.kwargs.get("do_not_specialize") or ())
    key = []
    for name, value in zip(kernel.arg_names, args):
        if name in skip or isinstance(value, float):
            key.append(type(value).__name__)
        elif isinstance(value, int) and not isinstance(value, bool):
            key.append(1 if value == 1 else value % 16 == 0)
        elif isinstance(value, torch.Tensor):
            key.append((value.dtype, value.data_ptr() % 16 == 0))
        else:
            key.append(value)
    return tuple(key) + tuple(sorted(constexprs.items()))


def record_launches(monkeypatch, kernels) -> list:
    """Replaces the kernels' launches by a record of (kernel name, `compile_key`): the
    kernels do not run (their outputs stay as allocated), only their arguments count."""
    launches = []
    for kernel in kernels:
        def record(*args, grid, warmup, kernel=kernel, **constexprs):
            launches.append((kernel.__name__, compile_key(kernel, args, constexprs)))
        monkeypatch.setattr(kernel, "run", record)
    return launches


def compiled_variants(launches) -> dict:
    """{kernel name: the set of its launches' compile keys}: one key a kernel, one compile."""
    variants = {}
    for name, key in launches:
        variants.setdefault(name, set()).add(key)
    return variants
