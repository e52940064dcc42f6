"""Fused kernels for BERT: varlen attention and dropout+residual+LayerNorm.

Each op runs on Triton for CUDA tensors and on PyTorch for CPU tensors; see
`backends()` for what this machine can run.
"""
from .attention import attention, attention_ref
from .dispatch import backends
from .dropout import dropout, keep_mask
from .layer_norm import layer_norm, layer_norm_ref

__all__ = ["attention", "attention_ref", "layer_norm", "layer_norm_ref", "dropout", "keep_mask", "backends"]
__version__ = "0.1.0"
