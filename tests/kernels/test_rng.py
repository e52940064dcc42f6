"""Device-side dropout seeds (bertcore_kernels.rng): fresh per call, repeatable by seed."""
import pytest
import torch

from bertcore_kernels.rng import next_seed, seed_tensor


def draws(n=4, device="cpu"):
    return [int(next_seed(device).item()) for _ in range(n)]


def test_fresh_each_call_and_repeatable_by_manual_seed():
    torch.manual_seed(3)
    a = draws()
    torch.manual_seed(3)
    b = draws()
    torch.manual_seed(4)
    c = draws()
    assert a == b and len(set(a)) == 4
    assert not set(a) & set(c)


def test_seed_is_a_device_tensor_kernels_can_load():
    s = next_seed("cpu")
    assert s.shape == (1,) and s.dtype == torch.int64 and 0 <= int(s) < 2**63
    assert int(seed_tensor(-1, "cpu")) == 2**63 - 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_draw_fresh_seeds_and_reseeding_repeats():
    torch.manual_seed(0)
    next_seed("cuda")                                  # warm-up outside the capture
    graph, out = torch.cuda.CUDAGraph(), torch.zeros(1, dtype=torch.int64, device="cuda")
    with torch.cuda.graph(graph):
        out.copy_(next_seed("cuda"))
    seen = []
    for _ in range(3):
        graph.replay()
        seen.append(int(out.item()))
    assert len(set(seen)) == 3
    torch.manual_seed(0)
    first = draws(2, "cuda")
    torch.manual_seed(0)
    assert draws(2, "cuda") == first
