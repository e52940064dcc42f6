"""Post-LN residual block tail: LayerNorm(dropout(x) + residual), over the last dim.

The file reads: the PyTorch reference (also the CPU path), then the public
function. The Triton kernels plug in behind `layer_norm`.
"""
import torch
import torch.nn.functional as F

from .dispatch import resolve


def layer_norm_ref(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, dropout_mask=None,
                   generator=None, upcast=False):
    """LN(dropout(x) + residual) in plain PyTorch; differentiable.

    `dropout_mask` (same shape as x, bool, True = keep) applies that exact mask,
    scaled by 1/(1-p), to check a kernel's dropout; otherwise dropout draws from
    `generator` (or torch's global RNG). `upcast` computes in fp32 for half inputs.
    """
    out_dtype = x.dtype
    if upcast and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
        residual = residual.float() if residual is not None else None
        weight, bias = weight.float(), bias.float()
    if dropout_mask is not None:
        x = x * dropout_mask.to(x.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        if generator is None:
            x = F.dropout(x, dropout_p, training=True)
        else:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= dropout_p
            x = x * keep.to(x.dtype) / (1.0 - dropout_p)
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps).to(out_dtype)


def layer_norm(x, weight, bias, eps=1e-12, residual=None, dropout_p=0.0, seed=None, backend="auto"):
    """LayerNorm(dropout(x) + residual) over the last dimension, in one pass on a GPU.

    x, residual: (..., hidden); weight, bias: (hidden,). `dropout_p` applies to x
    only (BERT's sub-layer output); `seed` makes it repeatable (None draws from
    torch's RNG). `backend`: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".
    """
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x has {tuple(x.shape)}: they must match")
    if weight.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
        raise ValueError(f"weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must be "
                         f"({x.shape[-1]},), the last dim of x {tuple(x.shape)}")
    if resolve(backend, x) == "triton":
        from .layer_norm_triton import layer_norm_triton
        return layer_norm_triton(x, weight, bias, eps, residual, dropout_p, seed)
    generator = None
    if dropout_p > 0.0 and seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    return layer_norm_ref(x, weight, bias, eps, residual, dropout_p, generator=generator)
