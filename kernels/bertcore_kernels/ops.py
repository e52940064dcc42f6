"""Pieces the ops share for `torch.compile`: the dropout seed as a custom op.

Eager calls go straight to `rng.next_seed` (no dispatcher on the launch-bound path).
Under `torch.compile` the draw is the custom op `bertcore::device_seed`, opaque to
Dynamo (which cannot trace `next_seed`'s bookkeeping), so a compiled graph calls it
at run time and each call, or each CUDA-graph replay, draws a fresh seed.
"""
import torch

from .rng import next_seed


@torch.library.custom_op("bertcore::device_seed", mutates_args=())
def _device_seed_op(like: torch.Tensor) -> torch.Tensor:
    # `like` gives the device, and makes two draws in one graph different calls (a
    # graph's common-subexpression pass would merge two identical argument lists).
    return next_seed(like.device)


@_device_seed_op.register_fake
def _(like):
    return torch.empty((1,), dtype=torch.int64, device=like.device)


def device_seed(like: torch.Tensor) -> torch.Tensor:
    """A fresh (1,) int64 dropout seed on `like`'s device (see `rng.next_seed`)."""
    if torch.compiler.is_compiling():
        return torch.ops.bertcore.device_seed(like)
    return next_seed(like.device)
