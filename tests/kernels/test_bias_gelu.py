"""Triton GELU(x + bias) (on the GPU, or the interpreter on CPU), forward and backward,
against an fp64 PyTorch reference under the 2x-PyTorch's-error rule."""
import importlib

import pytest
import torch

import bertcore_kernels as K
from bertcore_kernels.bias_gelu import bias_gelu_ref
from bertcore_kernels.dispatch import interpret_mode

from kernel_checks import DEVICE, assert_rule, compiled_variants, record_launches, requires_cuda

bg_mod = importlib.import_module("bertcore_kernels.bias_gelu")  # the package rebinds .bias_gelu
NAMES = ("y", "dx", "dbias")


def inputs(shape, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, then moved: same numbers anywhere
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    b = 0.5 * torch.randn(shape[-1], generator=g, dtype=torch.float64)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(device), b.to(device), grad.to(device)


def run(fn, x, b, grad, dtype, bias_dtype=None):
    """Forward and backward; returns y, dx, dbias."""
    x = x.detach().to(dtype).requires_grad_()
    b = b.detach().to(bias_dtype or dtype).requires_grad_()
    y = fn(x, b)
    y.backward(grad.to(y.dtype))
    return y, x.grad, b.grad


def check_against_fp64(shape, dtype, bias_dtype=None, device=DEVICE):
    x, b, grad = inputs(shape, device=device)
    tri = run(lambda x, b: K.bias_gelu(x, b, backend="triton"), x, b, grad, dtype, bias_dtype)
    same = run(bias_gelu_ref, x, b, grad, dtype, bias_dtype)
    # fp64 on the same rounded inputs: the error measured is the computation's alone.
    rx, rb, rg = x.to(dtype), b.to(bias_dtype or dtype), grad.to(dtype)
    ref = run(bias_gelu_ref, rx, rb, rg, torch.float64)
    for name, t, s, r in zip(NAMES, tri, same, ref):
        want = (bias_dtype or dtype) if name == "dbias" else dtype
        assert t.dtype == want, (name, t.dtype)
        assert_rule(name, t, s, r, dtype)


@pytest.mark.parametrize("rows", [0, 1, 17])
@pytest.mark.parametrize("width", [512, 1536, 3072])
def test_fp32_matches_fp64(rows, width):
    check_against_fp64((rows, width), torch.float32)


@pytest.mark.parametrize("width", [512, 1536, 3072])
def test_fp16_matches_fp64(width):
    check_against_fp64((17, width), torch.float16)


def test_odd_width_3d_input_and_fp32_bias():
    check_against_fp64((2, 9, 1000), torch.float32)               # column blocks end mid-tile
    check_against_fp64((17, 1536), torch.float16, torch.float32)  # autocast: fp16 product, fp32 bias


def test_many_rows_split_over_programs_and_deterministic():
    # more rows than one backward program walks: the d(bias) partial sums add up
    x, b, grad = inputs((160, 64))
    a = run(lambda x, b: K.bias_gelu(x, b, backend="triton"), x, b, grad, torch.float32)
    c = run(lambda x, b: K.bias_gelu(x, b, backend="triton"), x, b, grad, torch.float32)
    for u, v in zip(a, c):
        assert torch.equal(u, v)
    ref = run(bias_gelu_ref, x, b, grad, torch.float64)
    torch.testing.assert_close(a[2].double(), ref[2], rtol=1e-5, atol=1e-5)


def test_launch_config_override_gives_the_same_values():
    x, b, grad = inputs((17, 200))
    fn = lambda x, b: K.bias_gelu(x, b, backend="triton")  # noqa: E731
    base = run(fn, x, b, grad, torch.float32)
    with bg_mod.override_launch_configs({"fwd": (1, 64, 1), "bwd": (4, 128, 2, 1)}):
        other = run(fn, x, b, grad, torch.float32)
    for name, u, v in zip(NAMES, base, other):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="powers of two"):
        with bg_mod.override_launch_configs({"fwd": (3, 64, 1)}):
            pass


def test_backend_choice_and_torch_backend_matches_f_gelu(monkeypatch):
    calls = []
    real = bg_mod._bias_gelu_fwd
    monkeypatch.setattr(bg_mod, "_bias_gelu_fwd", lambda *a: calls.append(1) or real(*a))
    x, b, _ = (t.float() for t in inputs((4, 64), device="cpu"))
    ref = K.bias_gelu(x, b)                                                  # auto on CPU: torch
    assert calls == [] and torch.equal(ref, torch.nn.functional.gelu(x + b))
    with K.use_backend("triton"):
        torch.testing.assert_close(K.bias_gelu(x.to(DEVICE), b.to(DEVICE)).cpu(), ref)
    assert calls == [1]


def test_bad_inputs_raise_clear_errors():
    x, b, _ = (t.float() for t in inputs((4, 64)))
    with pytest.raises(ValueError, match="bias of shape"):
        K.bias_gelu(x, b[:10], backend="triton")
    with pytest.raises(TypeError, match="fp16, bf16 and fp32"):
        K.bias_gelu(x.double(), b.double(), backend="triton")


# --------------------------------------------------------------------------- GPU only
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_cuda_bias_gelu_matches_fp64(dtype):
    for shape in ((1000, 3072), (4099, 1536), (17, 512), (1, 4096)):
        check_against_fp64(shape, dtype, device="cuda")
    check_against_fp64((257, 3072), dtype, torch.float32, device="cuda")


@requires_cuda
def test_cuda_new_batch_does_not_recompile():
    def compiled():
        return sum(len(cache[0]) for cache in bg_mod._bias_gelu_fwd_kernel.device_caches.values())

    for i, rows in enumerate((7, 128, 1000, 4099)):
        x, b, grad = inputs((rows, 3072), device="cuda")
        run(lambda x, b: K.bias_gelu(x, b, backend="triton"), x, b, grad, torch.bfloat16)
        if i == 0:
            first = compiled()
    assert compiled() == first


# ------------------------------------------------------------------ in the encoder
@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_intermediate_fuses_only_exact_gelu_on_triton(monkeypatch, act):
    from bertcore import BertConfig
    from bertcore.model import Intermediate
    calls = []
    real = bg_mod._bias_gelu_fwd
    monkeypatch.setattr(bg_mod, "_bias_gelu_fwd", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = Intermediate(BertConfig(hidden_size=32, intermediate_size=128, num_attention_heads=2, hidden_act=act))
    x = torch.randn(9, 32)
    plain = layer.act(torch.nn.functional.linear(x, layer.dense.weight, layer.dense.bias))
    assert torch.equal(layer(x), plain) and calls == []        # CPU, torch backend: exactly HF's ops
    layer, x = layer.to(DEVICE), x.to(DEVICE)
    with K.use_backend("triton"):
        fused = layer(x)
    assert calls == ([1] if act == "gelu" else [])
    torch.testing.assert_close(fused.cpu(), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not interpret_mode(), reason="the GPU compiles for real; this keys launches as its JIT does")
def test_new_token_count_reuses_the_compiled_kernels(monkeypatch):
    # As the LayerNorm's: a batch of another token count keys every launch alike.
    launches = record_launches(monkeypatch, (bg_mod._bias_gelu_fwd_kernel, bg_mod._bias_gelu_bwd_kernel))
    for tokens in (1, 5, 16, 17, 48, 100, 512):
        x, b, grad = inputs((tokens, 3072))
        run(lambda x, b: K.bias_gelu(x, b, backend="triton"), x, b, grad, torch.float16)
    keys = compiled_variants(launches)
    assert set(keys) == {"_bias_gelu_fwd_kernel", "_bias_gelu_bwd_kernel"}
    assert all(len(compiled) == 1 for compiled in keys.values()), {k: len(v) for k, v in keys.items()}
