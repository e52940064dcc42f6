"""torch.compile(fullgraph=True) traces layer_norm and bias_gelu without graph breaks
(the Triton launchers are custom ops, the dropout seed a custom op drawing on the
device) and gives eager's values and gradients: the torch backend on CPU tensors, the
Triton backend in the interpreter (CPU) or on the GPU."""
import importlib

import pytest
import torch

import bertcore_kernels as K
from bertcore_kernels.rng import seed_tensor

from kernel_checks import DEVICE, requires_cuda

ln_mod = importlib.import_module("bertcore_kernels.layer_norm")
bg_mod = importlib.import_module("bertcore_kernels.bias_gelu")
EPS = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def leaves(*shapes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes]


def values_and_grads(fn, ts, seed=1):
    for t in ts:
        t.grad = None
    out = fn(*ts)
    g = torch.Generator().manual_seed(seed)
    out.backward(torch.randn(out.shape, generator=g).to(out.device))
    return [out.detach()] + [t.grad.clone() for t in ts]


def assert_compiled_equals_eager(fn, ts, exact):
    eager = values_and_grads(fn, ts)
    compiled = values_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), ts)
    for e, c in zip(eager, compiled):
        if exact:
            assert torch.equal(e, c)
        else:
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_compiles_fullgraph_with_eager_values(backend):
    device = "cpu" if backend == "torch" else DEVICE
    ts = leaves((2, 5, 96), (2, 5, 96), (96,), (96,), device=device)

    def fn(x, r, w, b):
        return K.layer_norm(x * 2, w, b, EPS, residual=r, backend=backend).square()

    assert_compiled_equals_eager(fn, ts, exact=backend == "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_with_its_copy_compiles_fullgraph(backend):
    # the two-output form the encoder runs under autocast: both gradients reach the kernel
    device = "cpu" if backend == "torch" else DEVICE
    ts = leaves((2, 5, 96), (2, 5, 96), (96,), (96,), device=device)

    def fn(x, r, w, b):
        y, y_copy = K.layer_norm(x * 2, w, b, EPS, residual=r, backend=backend, copy_dtype=torch.float16)
        return y.square() + y_copy.float()

    assert_compiled_equals_eager(fn, ts, exact=backend == "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bias_gelu_compiles_fullgraph_with_eager_values(backend):
    device = "cpu" if backend == "torch" else DEVICE
    ts = leaves((3, 7, 128), (128,), device=device)

    def fn(x, b):
        return K.bias_gelu(x - 0.5, b, backend=backend) * 3

    assert_compiled_equals_eager(fn, ts, exact=backend == "triton")


def test_compiled_dropout_draws_fresh_masks_and_manual_seed_repeats():
    n = 128
    x = torch.ones(8, n, device=DEVICE, requires_grad=True)
    w, b = torch.ones(n, device=DEVICE), torch.zeros(n, device=DEVICE)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(x):
        return K.layer_norm(x, w, b, EPS, dropout_p=0.25, backend="triton")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        a, c = fn(x), fn(x)
        torch.manual_seed(7)
        a2 = fn(x)
    assert not torch.equal(a > 0, c > 0)       # each call of the compiled graph: a new seed
    assert torch.equal(a, a2)                  # and torch.manual_seed repeats the sequence
    a.backward(torch.randn_like(a))
    assert torch.equal(x.grad != 0, a > 0)     # the backward regenerated the forward's mask


def test_custom_ops_pass_opcheck():
    x, r = torch.randn(5, 64, device=DEVICE), torch.randn(5, 64, device=DEVICE)
    w, b = torch.rand(64, device=DEVICE) + 0.5, torch.randn(64, device=DEVICE)
    seed = seed_tensor(3, DEVICE)
    tests = ("test_schema", "test_faketensor")
    for copy_dtype in (None, torch.float16):
        torch.library.opcheck(torch.ops.bertcore.layer_norm_fwd, (x, w, b, r, EPS, 0.2, seed, copy_dtype),
                              test_utils=tests)
    y, mean, rstd, y_copy = torch.ops.bertcore.layer_norm_fwd(x, w, b, r, EPS, 0.2, seed, torch.float16)
    for dy_copy in (None, torch.randn_like(y_copy)):
        torch.library.opcheck(torch.ops.bertcore.layer_norm_bwd, (torch.randn_like(y), x, w, r, mean, rstd, 0.2,
                                                                  seed, True, dy_copy), test_utils=tests)
    torch.library.opcheck(torch.ops.bertcore.bias_gelu_fwd, (x, b), test_utils=tests)
    torch.library.opcheck(torch.ops.bertcore.bias_gelu_bwd, (torch.randn_like(x), x, b), test_utils=tests)


@requires_cuda
def test_cuda_feed_forward_compiles_fullgraph_with_inductor():
    # The feed-forward's ops inside an Inductor graph (opaque custom ops), bf16 autocast,
    # dropout with a fixed seed so eager and compiled drop the same features. One case:
    # an Inductor compile takes tens of seconds.
    dropout_p = 0.1
    import torch.nn.functional as F
    h, w1, b1, w2, b2, lw, lb = leaves((300, 256), (1024, 256), (1024,), (256, 1024), (256,), (256,), (256,),
                                       device="cuda")

    def block(h, w1, b1, w2, b2, lw, lb):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inter = K.bias_gelu(F.linear(h, w1), b1)
            return K.layer_norm(F.linear(inter, w2, b2), lw, lb, EPS, residual=h, dropout_p=dropout_p, seed=3)

    with torch.no_grad():
        w1 /= 16                                 # 1/sqrt(fan-in): activations of order 1
        w2 /= 32
    ts = [h, w1, b1, w2, b2, lw, lb]
    eager = values_and_grads(block, ts)
    compiled = values_and_grads(torch.compile(block, fullgraph=True), ts)
    for e, c in zip(eager, compiled):           # same kernels and masks; Inductor may round differently
        assert ((c.float() - e.float()).norm() / e.float().norm()).item() < 1e-2
