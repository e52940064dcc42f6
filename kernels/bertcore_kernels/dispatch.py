"""Backend choice for every op: Triton on CUDA tensors, PyTorch on CPU tensors.

`BERTCORE_KERNELS=triton|torch` overrides "auto" for a whole run; "triton" on a CPU
tensor needs `TRITON_INTERPRET=1` (Triton's interpreter), which is how CPU-only
machines check the kernels.
"""
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> tuple[bool, str]:
    """(usable, why not) for the Triton backend on this machine."""
    if importlib.util.find_spec("triton") is None:
        return False, "the `triton` package is not installed (pip install triton)"
    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name()}"
    if interpret_mode():
        return True, "TRITON_INTERPRET=1: Triton's interpreter on the CPU (slow; for testing)"
    return False, "no CUDA device; set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter"


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backends() -> dict[str, str]:
    """Which backends this machine can run, and why not where it cannot."""
    ok, why = triton_available()
    return {
        "torch": "available: PyTorch ops (scaled_dot_product_attention, layer_norm)",
        "triton": ("available: " if ok else "unavailable: ") + why,
    }


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """The backend that runs an op on `tensor`: "triton" or "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        backend = os.environ.get("BERTCORE_KERNELS", "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"BERTCORE_KERNELS={backend!r}: expected 'triton' or 'torch'")
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available()[0] else "torch"
    if backend == "triton" and not tensor.is_cuda and not interpret_mode():
        raise RuntimeError(
            "backend='triton' on a CPU tensor needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before importing triton, or use backend='torch'"
        )
    return backend
