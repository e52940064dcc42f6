"""Backend choice for every op: Triton on CUDA tensors, PyTorch on CPU tensors.

This module is the one place that decides. `BERTCORE_KERNELS=triton|torch` overrides
"auto" for a whole run; it is read once, when the package is imported (the ops ask
`resolve` three times per layer, so a per-call `os.environ` lookup is host time on
the launch-bound path). `use_backend(...)` overrides "auto" inside a `with` block,
for tests and for code that cannot pass `backend=` down (the encoder). "triton" on a
CPU tensor needs `TRITON_INTERPRET=1` (Triton's interpreter), which is how CPU-only
machines check the kernels.

Triton is imported here, once, so the op modules can define their `@triton.jit`
kernels at module level. Where Triton is missing the package still imports: the
kernels become inert stubs and only the torch backend is offered.
"""
import os
import types
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "torch")

# triton.jit picks compiled or interpreted kernels when it decorates them, i.e. when
# this package is imported: what the environment said then is what counts.
_INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

try:
    import triton
    import triton.language as tl
    TRITON_IMPORT_ERROR = None
except ImportError as exc:  # the torch backend keeps working without it
    TRITON_IMPORT_ERROR = exc

    def _jit(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    triton = types.SimpleNamespace(jit=_jit, cdiv=lambda a, b: -(-a // b),
                                   next_power_of_2=lambda n: 1 << max(n - 1, 0).bit_length())
    tl = types.SimpleNamespace(constexpr=lambda value=None: value)   # annotations, and constants' plain values


def triton_available() -> tuple[bool, str]:
    """(usable, why not) for the Triton backend on this machine."""
    if TRITON_IMPORT_ERROR is not None:
        return False, f"the `triton` package does not import ({TRITON_IMPORT_ERROR}); pip install triton"
    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name()}"
    if _INTERPRET_AT_IMPORT:
        return True, "TRITON_INTERPRET=1: Triton's interpreter on the CPU (slow; for testing; fp32/fp16 only)"
    if interpret_requested():
        return False, ("TRITON_INTERPRET=1 was set after bertcore_kernels was imported; set it "
                       "before the first import")
    return False, "no CUDA device; set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter"


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpret_mode() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter."""
    return TRITON_IMPORT_ERROR is None and _INTERPRET_AT_IMPORT


def backends() -> dict[str, str]:
    """Which backends this machine can run, and why not where it cannot."""
    ok, why = triton_available()
    return {
        "torch": "available: PyTorch ops (scaled_dot_product_attention, layer_norm)",
        "triton": ("available: " if ok else "unavailable: ") + why,
    }


def _backend_from_env() -> str:
    value = os.environ.get("BERTCORE_KERNELS", "").strip().lower()
    return value or "auto"


# What "auto" means for this process: the environment at import, or use_backend's choice.
_auto = _backend_from_env()


@contextmanager
def use_backend(backend: str):
    """Inside the block, `backend="auto"` means `backend` ("triton", "torch", or "auto"
    for the device rule); it beats `BERTCORE_KERNELS`. Not thread-local: one choice per
    process at a time.

    >>> with bertcore_kernels.use_backend("torch"):
    ...     out = encoder(ids, attention_mask=mask)     # every op on the torch backend
    """
    global _auto
    if backend not in BACKENDS:
        raise ValueError(f"use_backend({backend!r}): expected one of {BACKENDS}")
    previous, _auto = _auto, backend
    try:
        yield
    finally:
        _auto = previous


def _named(chosen: bool) -> str:
    # Where "triton" came from, for an error: who set BERTCORE_KERNELS never passed backend=.
    return "backend='triton'" if chosen else "backend='triton' (from BERTCORE_KERNELS or use_backend)"


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """The backend that runs an op on `tensor`: "triton" or "torch"."""
    chosen = backend != "auto"  # False: the choice came from BERTCORE_KERNELS or use_backend
    if backend == "auto":
        backend = _auto
        if backend not in BACKENDS:
            raise ValueError(f"BERTCORE_KERNELS={backend!r}: expected 'triton' or 'torch' (or unset it)")
    elif backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        # A CUDA tensor proves the device; asking the driver again (triton_available)
        # on every op would cost host time on the launch-bound path.
        return "triton" if tensor.is_cuda and TRITON_IMPORT_ERROR is None else "torch"
    if backend == "triton":
        if TRITON_IMPORT_ERROR is not None:
            raise RuntimeError(f"{_named(chosen)} but {triton_available()[1]}; or use backend='torch'")
        if not tensor.is_cuda and not interpret_mode():
            raise RuntimeError(
                f"{_named(chosen)} on a CPU tensor needs Triton's interpreter: set TRITON_INTERPRET=1 "
                "before importing bertcore_kernels (or triton), or use backend='torch'")
    return backend


@contextmanager
def patched(table: dict, entries: dict):
    """`table` with `entries` added or replaced for a block, then restored as it was
    (the ops' launch-configuration overrides)."""
    saved = dict(table)
    table.update(entries)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)
