"""The CPU dropout mask (four 15-bit lanes per 64-bit draw) against the statistics
of Bernoulli(1 - p): keep fraction, independence of neighbouring lanes, unbiased
scale, repeatability by seed."""
import math

import pytest
import torch

import bertcore_kernels as K


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_neighbours_are_independent(p):
    n = 1 << 20
    g = torch.Generator().manual_seed(0)
    keep, scale = K.keep_mask((n,), p, generator=g)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    p_exact = 1 - 1 / scale                                    # the mask's own rounded p
    assert abs(p_exact - p) <= 2 ** -16
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((~keep).float().mean().item() - p_exact) < 5 * sigma
    # lanes j and j+1 share a 64-bit draw (j = 0..2) or come from the next one (j = 3)
    lanes = keep.view(-1, 4).float()
    for j in range(4):
        both = (lanes[:, j] * lanes[:, (j + 1) % 4]).mean().item()
        assert abs(both - (1 - p_exact) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / (n / 4))


def test_dropout_is_unbiased_and_repeatable():
    x = torch.ones(3, 1001)                                    # odd size: not a multiple of 4 lanes
    g = torch.Generator()
    a = K.dropout(x, 0.3, generator=g.manual_seed(5))
    b = K.dropout(x, 0.3, generator=g.manual_seed(5))
    c = K.dropout(x, 0.3, generator=g.manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = K.dropout(torch.ones(1 << 20), 0.3, generator=g.manual_seed(7))
    assert abs(big.mean().item() - 1.0) < 5 * math.sqrt(0.3 / 0.7 / (1 << 20))
    values = torch.unique(a).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-4)


def test_dropout_gradient_uses_the_same_mask():
    x = torch.randn(4, 37, requires_grad=True)
    torch.manual_seed(3)
    y = K.dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.where(y != 0, y / x, torch.zeros_like(y)).detach())


def test_off_and_bad_p():
    x = torch.randn(5)
    assert K.dropout(x, 0.0) is x and K.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        K.keep_mask((5,), 1.0)
