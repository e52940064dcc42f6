"""Triton LN(dropout(x) + residual) (on the GPU, or the interpreter on CPU) against an fp64
PyTorch reference."""
import importlib
import math

import pytest
import torch

import bertcore_kernels as K
from bertcore_kernels.layer_norm import layer_norm_ref
from bertcore_kernels.dispatch import interpret_mode
from bertcore_kernels.rng import seed_tensor

from kernel_checks import DEVICE, assert_rule, compiled_variants, record_launches, requires_cuda

ln_mod = importlib.import_module("bertcore_kernels.layer_norm")  # the package rebinds .layer_norm
EPS = 1e-5
NAMES = ("y", "dx", "dweight", "dbias", "dresidual")


def triton_layer_norm(*args, **kwargs):
    return K.layer_norm(*args, backend="triton", **kwargs)


def inputs(shape, residual=True, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, then moved: same numbers anywhere
    n = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    r = torch.randn(shape, generator=g, dtype=torch.float64) if residual else None
    w = 1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    move = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return tuple(map(move, (x, w, b, r, grad)))


def run(fn, x, w, b, r, grad, dtype, **kwargs):
    """Forward and backward; returns y, dx, dweight, dbias, dresidual (None without residual)."""
    leaves = [t.detach().to(dtype).clone().requires_grad_() if t is not None else None for t in (x, w, b, r)]
    y = fn(leaves[0], leaves[1], leaves[2], EPS, residual=leaves[3], **kwargs)
    y.backward(grad.to(dtype))
    return (y, *(t.grad if t is not None else None for t in leaves))


def check_against_fp64(shape, dtype, residual=True, device=DEVICE, dropout_p=0.0, seed=None):
    x, w, b, r, grad = inputs(shape, residual, device=device)
    kw, ref_kw = {}, {}
    if dropout_p:
        keep = kept_elements(shape, dropout_p, seed, device)
        kw = dict(dropout_p=dropout_p, seed=seed)
        ref_kw = dict(dropout_p=dropout_p, dropout_mask=keep)
    tri = run(triton_layer_norm, x, w, b, r, grad, dtype, **kw)
    same = run(layer_norm_ref, x, w, b, r, grad, dtype, **ref_kw)
    # fp64 on the same rounded inputs: the error measured is the computation's alone.
    rounded = [t.to(dtype) if t is not None else None for t in (x, w, b, r, grad)]
    ref = run(layer_norm_ref, *rounded, torch.float64, **ref_kw)
    errors = {}
    for name, t, s, rf in zip(NAMES, tri, same, ref):
        if rf is None:
            assert t is None
            continue
        assert t.dtype == dtype
        errors[name] = assert_rule(name, t, s, rf, dtype)
    return errors


def kept_elements(shape, p, seed, device=DEVICE):
    """The kernel's own keep-mask for (shape, p, seed), read back from its output.

    With x = 1, no residual, weight 1 and bias 0, a kept element is 1/(1-p), above
    its row mean, and a dropped one is 0, below it: y > 0 exactly where kept (as long
    as a row is neither all kept nor all dropped, which the sizes here make certain).
    """
    n = shape[-1]
    ones = torch.ones(shape, device=device)
    y = triton_layer_norm(ones, torch.ones(n, device=device), torch.zeros(n, device=device), EPS,
                          dropout_p=p, seed=seed)
    return y > 0


@pytest.mark.parametrize("width", [384, 768, 1023])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
def test_fp32_matches_fp64(width, residual):
    check_against_fp64((33, width), torch.float32, residual)


@pytest.mark.parametrize("width", [384, 1023])
def test_fp16_matches_fp64(width):
    check_against_fp64((33, width), torch.float16, residual=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_one_row(dtype):
    check_against_fp64((1, 768), dtype, residual=True)
    check_against_fp64((1, 384), dtype, residual=False)


def test_batched_3d_input_and_wide_rows():
    check_against_fp64((2, 5, 96), torch.float32)
    check_against_fp64((3, 8192), torch.float32)  # BERT-large-and-beyond widths fit


def test_zero_rows():
    x = torch.zeros(0, 64, device=DEVICE, requires_grad=True)
    w = torch.ones(64, device=DEVICE, requires_grad=True)
    b = torch.zeros(64, device=DEVICE, requires_grad=True)
    y = triton_layer_norm(x, w, b, EPS, residual=torch.zeros(0, 64, device=DEVICE))
    assert y.shape == (0, 64)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(64, device=DEVICE))


def test_dweight_is_deterministic():
    x, w, b, r, grad = inputs((50, 384))
    a = run(triton_layer_norm, x, w, b, r, grad, torch.float32)
    c = run(triton_layer_norm, x, w, b, r, grad, torch.float32)
    for u, v in zip(a, c):
        assert torch.equal(u, v)


# ----------------------------------------------------------------------------- dropout
def test_dropout_backward_uses_forward_mask():
    check_against_fp64((24, 384), torch.float32, dropout_p=0.1, seed=11)
    check_against_fp64((7, 1023), torch.float16, dropout_p=0.3, seed=12)
    check_against_fp64((9, 256), torch.float32, residual=False, dropout_p=0.5, seed=13)


def test_dropout_repeatable_by_seed():
    x, w, b, r, _ = inputs((16, 256))
    x, w, b, r = (t.float() for t in (x, w, b, r))
    a = triton_layer_norm(x, w, b, EPS, residual=r, dropout_p=0.2, seed=3)
    assert torch.equal(a, triton_layer_norm(x, w, b, EPS, residual=r, dropout_p=0.2, seed=3))
    assert not torch.equal(a, triton_layer_norm(x, w, b, EPS, residual=r, dropout_p=0.2, seed=4))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        c = triton_layer_norm(x, w, b, EPS, residual=r, dropout_p=0.2)
        torch.manual_seed(1)
        assert torch.equal(c, triton_layer_norm(x, w, b, EPS, residual=r, dropout_p=0.2))


def test_dropout_keep_fraction_and_scaling():
    p, shape = 0.25, (16, 1024)  # wide rows: the interpreter pays per program, not per element
    n = shape[0] * shape[1]
    keep = kept_elements(shape, p, seed=21)
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # The saved row mean of dropout(1) is (kept fraction) / (1 - p): the kernel's scaling.
    ones = torch.ones(shape, device=DEVICE)
    w, b = torch.ones(1024, device=DEVICE), torch.zeros(1024, device=DEVICE)
    _, mean, _, _ = ln_mod._layer_norm_fwd(ones, w, b, EPS, None, p, seed_tensor(21, DEVICE))
    torch.testing.assert_close(mean, keep.float().mean(-1) / (1 - p))
    assert abs(mean.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_fraction_and_the_four_philox_lanes_are_independent(p):
    # One Philox call feeds features 4q..4q+3 of a row: its four outputs, and the same
    # feature in neighbouring rows, must be independent Bernoulli(1 - p) draws.
    shape = (64, 1024)
    keep = kept_elements(shape, p, seed=31).float()
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    lanes = keep.view(-1, 4)
    sigma = math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / (n / 4))
    for i, j in ((0, 1), (1, 2), (2, 3), (0, 3)):
        assert abs((lanes[:, i] * lanes[:, j]).mean().item() - (1 - p) ** 2) < 5 * sigma, (i, j)
    rows = (keep[1:] * keep[:-1]).mean().item()
    assert abs(rows - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


def test_dropout_mask_does_not_depend_on_the_launch_config():
    # The mask is a function of (seed, row, feature) only: any rows-per-program in the
    # forward, any split of the backward's rows, the same mask and the same gradients.
    x, w, b, r, grad = inputs((19, 200))
    kw = dict(dropout_p=0.3, seed=5)
    base = run(triton_layer_norm, x, w, b, r, grad, torch.float32, **kw)
    with ln_mod.override_launch_configs({(torch.float32, 200, "fwd"): (8, 2),
                                         (torch.float32, 200, "bwd"): (1, 1, 1)}):
        other = run(triton_layer_norm, x, w, b, r, grad, torch.float32, **kw)
    for name, u, v in zip(NAMES, base, other):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5, msg=name)
        if name in ("y", "dx", "dresidual"):
            assert torch.equal(u == 0, v == 0), name
    with pytest.raises(ValueError, match="power of two"):
        with ln_mod.override_launch_configs({(torch.float32, 200, "fwd"): (3, 2)}):
            pass


def test_fresh_seed_each_call_and_the_backward_keeps_its_own():
    # No seed: each call draws a new one on the device; a backward run after a later
    # forward still uses its own forward's mask (the Function saved the seed tensor).
    n = 256
    w, b = torch.ones(n, device=DEVICE), torch.zeros(n, device=DEVICE)
    x1 = torch.ones(8, n, device=DEVICE, requires_grad=True)
    x2 = torch.ones(8, n, device=DEVICE, requires_grad=True)
    y1 = triton_layer_norm(x1, w, b, EPS, dropout_p=0.3)
    y2 = triton_layer_norm(x2, w, b, EPS, dropout_p=0.3)
    assert not torch.equal(y1 > 0, y2 > 0)
    y2.backward(torch.randn_like(y2))
    y1.backward(torch.randn_like(y1))
    assert torch.equal(x1.grad != 0, y1 > 0) and torch.equal(x2.grad != 0, y2 > 0)


# ---------------------------------------------------------------------- dispatch, errors
def test_backend_choice(monkeypatch):
    calls = []
    real = ln_mod._layer_norm_fwd
    monkeypatch.setattr(ln_mod, "_layer_norm_fwd", lambda *a: calls.append(1) or real(*a))
    x, w, b, r, _ = (t.float() for t in inputs((4, 64), device="cpu"))
    ref = K.layer_norm(x, w, b, EPS, residual=r)                              # auto on CPU: torch
    assert calls == []
    # Forced Triton runs where the kernels can: compiled ones read only GPU tensors.
    x, w, b, r = (t.to(DEVICE) for t in (x, w, b, r))
    with K.use_backend("triton"):
        torch.testing.assert_close(K.layer_norm(x, w, b, EPS, residual=r).cpu(), ref)
    assert calls == [1]
    if x.is_cuda:
        K.layer_norm(x, w, b, EPS, residual=r)                                # auto on CUDA: triton
        assert calls == [1, 1]


def test_bad_inputs_raise_clear_errors():
    x, w, b, r, _ = (t.float() for t in inputs((4, 64)))
    with pytest.raises(ValueError, match="residual has shape"):
        triton_layer_norm(x, w, b, EPS, residual=r[:2])
    with pytest.raises(ValueError, match="last dim"):
        triton_layer_norm(x, w[:10], b, EPS)
    with pytest.raises(ValueError, match="dropout_p"):
        triton_layer_norm(x, w, b, EPS, dropout_p=1.5)
    with pytest.raises(TypeError, match="fp16, bf16 and fp32"):
        triton_layer_norm(x.double(), w.double(), b.double(), EPS)
    with pytest.raises(TypeError, match="fp16, bf16 and fp32"):
        triton_layer_norm(x, w, b, EPS, residual=r.double())


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_half_x_with_fp32_residual_promotes_like_eager(dropout_p):
    # Under autocast a sub-layer's fp16/bf16 output meets the fp32 residual stream:
    # the output is fp32 (as `x + residual` then LayerNorm in eager PyTorch) and each
    # gradient comes back in its input's dtype.
    x, w, b, r, grad = inputs((33, 96))
    keep = kept_elements((33, 96), dropout_p, 11) if dropout_p else None
    kw = dict(dropout_p=dropout_p, seed=11) if dropout_p else {}
    leaves = [x.half(), w.float(), b.float(), r.float()]
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y = triton_layer_norm(*leaves[:3], EPS, residual=leaves[3], **kw)
    y.backward(grad.float())
    assert y.dtype == torch.float32
    assert [t.grad.dtype for t in leaves] == [torch.float16, torch.float32, torch.float32, torch.float32]
    ref = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = layer_norm_ref(*ref[:3], EPS, residual=ref[3], dropout_p=dropout_p, dropout_mask=keep)
    y_ref.backward(grad)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for t, t_ref in zip(leaves, ref):
        torch.testing.assert_close(t.grad.double(), t_ref.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("used", ["both", "copy only"])
def test_copy_for_the_next_matrix_product_is_the_cast_and_its_gradient_adds(used):
    # Under autocast the fp32 output feeds the residual and, cast to the autocast dtype,
    # the next matrix product: the kernel writes that cast in the same pass, and the
    # backward adds the copy's gradient to the output's (as autograd would across a cast).
    x, w, b, r, grad = inputs((33, 96))
    grad_copy = inputs((33, 96), seed=1)[4]
    leaves = [t.detach().clone().requires_grad_() for t in (x.half(), w.float(), b.float(), r.float())]
    y, y_copy = triton_layer_norm(*leaves[:3], EPS, residual=leaves[3], dropout_p=0.2, seed=5,
                                  copy_dtype=torch.float16)
    assert y.dtype == torch.float32 and torch.equal(y_copy, y.half())
    outs, grads = ([y, y_copy], [grad.float(), grad_copy.half()]) if used == "both" else ([y_copy], [grad_copy.half()])
    torch.autograd.backward(outs, grads)
    ref = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = layer_norm_ref(*ref[:3], EPS, residual=ref[3], dropout_p=0.2, dropout_mask=kept_elements((33, 96), 0.2, 5))
    y_ref.backward((grad if used == "both" else 0) + grad_copy.half().double())
    for t, t_ref in zip(leaves, ref):
        torch.testing.assert_close(t.grad.double(), t_ref.grad, rtol=1e-3, atol=1e-3)
    same = triton_layer_norm(*leaves[:3], EPS, residual=leaves[3], copy_dtype=torch.float32)
    assert same[0] is same[1]                                       # the output is its own copy
    y_torch, copy_torch = K.layer_norm(*leaves[:3], EPS, residual=leaves[3], backend="torch",
                                       copy_dtype=torch.float16)
    assert torch.equal(copy_torch, y_torch.half())


def test_hidden_too_large_raises_and_torch_backend_takes_it():
    n = 16385  # past the fp32 limit of one row in registers
    x = torch.randn(2, n, device=DEVICE)
    w, b = torch.ones(n, device=DEVICE), torch.zeros(n, device=DEVICE)
    with pytest.raises(ValueError, match="up to 16384"):
        triton_layer_norm(x, w, b, EPS)
    y = K.layer_norm(x, w, b, EPS, backend="torch")
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (n,), w, b, EPS))


# --------------------------------------------------------------------------- GPU only
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_cuda_layer_norm_matches_fp64(dtype):
    for width in (384, 768, 1023, 4096):
        check_against_fp64((1000, width), dtype, device="cuda")
    check_against_fp64((257, 768), dtype, device="cuda", dropout_p=0.1, seed=5)


@requires_cuda
def test_cuda_new_batch_does_not_recompile():
    def compiled():
        return sum(len(cache[0]) for cache in ln_mod._layer_norm_fwd_kernel.device_caches.values())

    for i, rows in enumerate((7, 128, 1000, 4099)):
        x, w, b, r, _ = inputs((rows, 768), device="cuda")
        triton_layer_norm(x.half(), w.half(), b.half(), EPS, residual=r.half(), dropout_p=0.1, seed=i + 1)
        if i == 0:
            first = compiled()
    assert compiled() == first


@requires_cuda
def test_cuda_graph_replays_draw_fresh_masks():
    # The seed is read from device memory that the captured seed op advances, so each
    # replay of a CUDA graph drops different features (a host-drawn seed would freeze).
    x = torch.ones(64, 768, device="cuda")
    w, b = torch.ones(768, device="cuda"), torch.zeros(768, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):            # warm-up: compiles the kernel, draws a first seed
        triton_layer_norm(x, w, b, EPS, dropout_p=0.1)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_layer_norm(x, w, b, EPS, dropout_p=0.1)
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append(y > 0)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert all(abs(m.float().mean().item() - 0.9) < 0.01 for m in masks)


@pytest.mark.skipif(not interpret_mode(), reason="the GPU compiles for real; this keys launches as its JIT does")
def test_new_token_count_reuses_the_compiled_kernels(monkeypatch):
    # Another batch's token count must not compile the kernels again (on a GPU, a stall
    # in the middle of a training step): every launch keys alike, as Triton's JIT keys it.
    launches = record_launches(monkeypatch, (ln_mod._layer_norm_fwd_kernel, ln_mod._layer_norm_bwd_kernel))
    for tokens in (1, 5, 16, 17, 48, 100, 512):
        x, w, b, r, grad = inputs((tokens, 768))
        run(triton_layer_norm, x, w, b, r, grad, torch.float16, dropout_p=0.1)
    keys = compiled_variants(launches)
    assert set(keys) == {"_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel"}
    assert all(len(compiled) == 1 for compiled in keys.values()), {k: len(v) for k, v in keys.items()}
