"""Dropout for the CPU path that draws a quarter of the random numbers.

On the CPU, `torch.rand` and `bernoulli_` draw one mt19937 number per element
(10-20 ns each on the 2-core test machine), so dropout cost more than the matrix
products around it in a BERT training step. One 64-bit draw from `random_()` holds
63 random bits. That is four 15-bit lanes, which is enough resolution for a keep
test. The keep probability is therefore rounded to a multiple of 2**-15 (p = 0.1
becomes 0.100006), and the scale is the exact 1/(1 - p) of that rounded p, so the
expectation stays unbiased. Other devices keep PyTorch's own dropout, because
their RNG is cheap.
"""
import math

import torch
import torch.nn.functional as F

LANE_BITS = 15


def keep_mask(shape, p, device="cpu", generator=None):
    """(mask, scale): a bool mask of `shape`, True = keep, with each element kept
    with probability about 1 - p, and the 1/(1 - p) that makes `x * mask * scale`
    unbiased for that mask's exact p."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if torch.device(device).type != "cpu":
        return torch.rand(shape, device=device, generator=generator) >= p, 1.0 / (1.0 - p)
    n = math.prod(shape)
    # p within 2**-16 of 1 rounds to 2**15: clamp, or the scale below divides by zero.
    threshold = min(round(p * 2 ** LANE_BITS), 2 ** LANE_BITS - 1)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=generator)  # 63 random bits each
    lanes = words.view(torch.int16)[:n].bitwise_and_(2 ** LANE_BITS - 1)              # 4 × 15 bits per word
    return lanes.ge(threshold).view(shape), 2 ** LANE_BITS / (2 ** LANE_BITS - threshold)


def dropout(x, p, training=True, generator=None):
    """`F.dropout(x, p, training)`, but with `keep_mask`'s cheaper draws on the CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:  # here too: F.dropout would take p = 1 off the CPU, keep_mask refuses it on it
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if x.device.type != "cpu" and generator is None:
        return F.dropout(x, p, training=True)
    keep, scale = keep_mask(x.shape, p, x.device, generator)
    return x.mul(keep).mul_(scale)
