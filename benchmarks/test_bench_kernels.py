"""pytest-benchmark entry for the kernels: `pytest benchmarks --benchmark-only`.

A few representative points of the sweeps in bertcore.bench.attention / layer_norm
(which write the CSV/PNG); here pytest-benchmark does the timing and comparison."""
import pytest
import torch

import bertcore.bench.attention as bench_attention
import bertcore.bench.layer_norm as bench_layer_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("kind", ["equal-128", "mixed-16-128"])
@pytest.mark.parametrize("provider", bench_attention.PROVIDERS)
def test_attention(benchmark, provider, kind, mode):
    if bench_attention.available(provider, DEVICE, "fp32"):
        pytest.skip(bench_attention.available(provider, DEVICE, "fp32"))
    lengths = bench_attention.lengths_for(kind, 2048)
    inp = bench_attention.make_inputs(lengths, 12, 64, torch.float32, DEVICE)
    fn, leaves = bench_attention.provider_fn(provider, inp, lengths)
    benchmark.extra_info.update(real_tokens=sum(lengths), padded_tokens=len(lengths) * max(lengths))
    benchmark(bench_attention.mode_fn(fn, leaves, mode))


@pytest.mark.parametrize("mode", ["fwd", "full"])
@pytest.mark.parametrize("hidden", [384, 768])
@pytest.mark.parametrize("provider", bench_layer_norm.PROVIDERS)
def test_layer_norm(benchmark, provider, hidden, mode):
    if bench_attention.available(provider, DEVICE):
        pytest.skip(bench_attention.available(provider, DEVICE))
    x = torch.randn(4096, hidden, device=DEVICE, requires_grad=True)
    res = torch.randn(4096, hidden, device=DEVICE, requires_grad=True)
    w = torch.ones(hidden, device=DEVICE, requires_grad=True)
    b = torch.zeros(hidden, device=DEVICE, requires_grad=True)
    fn, leaves = bench_layer_norm.provider_fn(provider, x, res, w, b, 0.1)
    benchmark(bench_attention.mode_fn(fn, leaves, mode))
