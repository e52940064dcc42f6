"""Fused kernels for BERT: varlen attention, dropout+residual+LayerNorm, and the
feed-forward's bias+GELU.

Each op runs on Triton for CUDA tensors and on PyTorch for CPU tensors; the choice
is made in `dispatch` (`backends()` says what this machine can run, `use_backend`
overrides "auto" for a block). The attention kernels' launch configurations are a
table, `attention.LAUNCH_CONFIGS`, read through `launch_config` and changed for a
block through `override_launch_configs` (`dropout_mask_configs` builds the override
that picks where attention dropout's keep-mask comes from); `layer_norm.LAUNCH_CONFIGS` and
`bias_gelu.LAUNCH_CONFIGS` work the same way. The Triton launchers are also torch
custom ops (`torch.ops.bertcore.*`), so `torch.compile(fullgraph=True)` traces them.
"""
from .attention import attention, attention_ref, dropout_mask_configs, launch_config, override_launch_configs
from .bias_gelu import bias_gelu, bias_gelu_ref
from .dispatch import backends, use_backend
from .dropout import dropout, keep_mask
from .layer_norm import layer_norm, layer_norm_ref

__all__ = ["attention", "attention_ref", "layer_norm", "layer_norm_ref", "bias_gelu", "bias_gelu_ref",
           "dropout", "keep_mask", "backends", "use_backend", "launch_config", "override_launch_configs",
           "dropout_mask_configs"]
__version__ = "0.1.0"
