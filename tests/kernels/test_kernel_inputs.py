"""Unusual but legal inputs, and illegal ones, to the kernels' public functions: both
backends must give the fp64 reference's result (the rule of kernel_checks) or the same
one-line error naming the argument."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import bertcore_kernels as K
from bertcore_kernels.attention import attention_ref

from kernel_checks import DEVICE, assert_rule, cu_seqlens_of

BACKENDS = ["triton", "torch"]
HEADS, HEAD_DIM = 2, 16


def _device(backend):
    # compiled kernels read only GPU tensors; the torch backend runs anywhere
    return DEVICE if backend == "triton" else "cpu"


def _grads(fn, leaves, grad):
    """fn(*leaves) and the leaves' gradients for `grad`, on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out, *(t.grad for t in leaves)]


def _check_rule(fn, ref_fn, leaves, grad, dtype=torch.float32):
    """fn's output and gradients against fp64 (ref_fn on the same rounded inputs), with
    ref_fn in `dtype` as the PyTorch error the rule allows twice of."""
    got = _grads(fn, [t.to(dtype) for t in leaves], grad)
    same = _grads(ref_fn, [t.to(dtype) for t in leaves], grad)
    ref = _grads(ref_fn, [t.to(dtype).double() for t in leaves], grad.to(dtype).double())
    for i, (g, s, r) in enumerate(zip(got, same, ref)):
        assert_rule(f"output {i}" if i == 0 else f"grad {i}", g, s, r, dtype)


# ------------------------------------------------------------------------- attention
def _attn_inputs(lengths, device, head_dim=HEAD_DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    qkv = torch.randn(total, 3, HEADS, head_dim, generator=g, dtype=torch.float64).to(device)
    grad = torch.randn(total, HEADS, head_dim, generator=g, dtype=torch.float64).to(device)
    return qkv, grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_reads_a_strided_cu_seqlens(backend):
    # A column of a (B + 1, 2) table is a legal int32 (B + 1,) tensor with stride 2; the
    # kernels read cu_seqlens[b] at base + b and saw the other column (wrong rows, garbage).
    lengths, device = [5, 3, 9], _device(backend)
    cu = cu_seqlens_of(lengths, device)
    strided = torch.stack([cu, cu], 1)[:, 0]
    assert strided.stride(0) == 2
    qkv, grad = _attn_inputs(lengths, device)
    fn = lambda qkv: K.attention(*qkv.unbind(1), strided, max(lengths), backend=backend)  # noqa: E731
    ref = lambda qkv: attention_ref(*qkv.unbind(1), cu, max(lengths))  # noqa: E731
    _check_rule(fn, ref, [qkv], grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_layouts_match_fp64(backend):
    # transposed (H, T, D) storage, a storage offset, and a broadcast (stride-0) gradient
    lengths, device = [1, 17, 4], _device(backend)
    cu, total = cu_seqlens_of(lengths, device), sum(lengths)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, HEADS, total + 2, HEAD_DIM, generator=g, dtype=torch.float64).to(device)
    grad = torch.randn(1, HEADS, HEAD_DIM, generator=g, dtype=torch.float64).to(device).expand(total, -1, -1)

    def views(b):
        return [t[:, 2:].transpose(0, 1) for t in b.unbind(0)]                  # (T, H, D), offset 2

    fn = lambda b: K.attention(*views(b), cu, 17, backend=backend)  # noqa: E731
    ref = lambda b: attention_ref(*views(b), cu, 17)  # noqa: E731
    _check_rule(fn, ref, [base], grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_refuses_float_cu_seqlens(backend):
    # The Triton backend truncated float offsets to int32 (2.7 became 2); the torch one
    # failed inside split() with an error about split_sizes.
    device = _device(backend)
    qkv, _ = _attn_inputs([5, 3], device)
    cu = torch.tensor([0.0, 5.0, 8.0], device=device)
    with pytest.raises(TypeError, match=r"cu_seqlens must hold integer offsets .*float32"):
        K.attention(*qkv.float().unbind(1), cu, 5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_refuses_integer_qkv(backend):
    # the torch backend failed in a matmul ("expected m1 and m2 to have the same dtype")
    device = _device(backend)
    qkv, _ = _attn_inputs([5, 3], device)
    with pytest.raises(TypeError, match=r"floating-point q, k, v; got torch.int64"):
        K.attention(*qkv.long().unbind(1), cu_seqlens_of([5, 3], device), 5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_refuses_head_dim_zero(backend):
    # both backends died with ZeroDivisionError computing 1 / sqrt(head_dim)
    device = _device(backend)
    q = torch.zeros(8, HEADS, 0, device=device)
    with pytest.raises(ValueError, match=r"head_dim >= 1; got q of shape \(8, 2, 0\)"):
        K.attention(q, q, q, cu_seqlens_of([5, 3], device), 5, backend=backend)


def test_torch_backend_takes_any_int_seed():
    # manual_seed refused seeds past 64 bits ("Overflow when unpacking long long"), which
    # the Triton backend takes; in-range seeds, negative ones included, keep their masks.
    qkv, _ = _attn_inputs([6, 2], "cpu")
    q, k, v = qkv.float().unbind(1)
    cu = cu_seqlens_of([6, 2], "cpu")
    attn = lambda seed: K.attention(q, k, v, cu, 6, dropout_p=0.3, seed=seed, backend="torch")  # noqa: E731
    assert torch.equal(attn(2**70 + 5), attn(5))
    assert torch.equal(attn(-3), attn(2**64 - 3))
    x = torch.randn(4, 32)
    ln = lambda seed: K.layer_norm(x, torch.ones(32), torch.zeros(32), 1e-5, dropout_p=0.3, seed=seed,  # noqa: E731
                                   backend="torch")
    assert torch.equal(ln(2**70 + 5), ln(5))


# ------------------------------------------------------------------------ layer_norm
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_reads_strided_weight_and_bias(backend):
    # Columns of a (N, 2) table: legal (N,) tensors with stride 2; the kernel read them at
    # base + i (every other element of the table: an error of about 9 on hidden 48).
    device, n = _device(backend), 48
    g = torch.Generator().manual_seed(2)
    x, r = (torch.randn(5, n, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    table = torch.randn(n, 4, generator=g, dtype=torch.float64).to(device)
    grad = torch.randn(5, n, generator=g, dtype=torch.float64).to(device)
    fn = lambda x, r, t: K.layer_norm(x, t[:, 1], t[:, 2], 1e-5, residual=r, backend=backend)  # noqa: E731
    ref = lambda x, r, t: F.layer_norm(x + r, (n,), t[:, 1], t[:, 2], 1e-5)  # noqa: E731
    _check_rule(fn, ref, [x, r, table], grad)


@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_weight_of_another_dtype_than_x(backend, weight_dtype):
    # The Triton kernel reads weight and bias in fp32 whatever their dtype; the torch
    # backend raised F.layer_norm's "mixed dtype (CPU): expect parameter to have scalar
    # type of Float". Both now give x's dtype and the fp64 result.
    device, n = _device(backend), 100
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, n, generator=g, dtype=torch.float64).to(device)
    w, b = (torch.randn(n, generator=g, dtype=torch.float64).to(weight_dtype).to(device) for _ in range(2))
    grad = torch.randn(3, n, generator=g, dtype=torch.float64).to(device)
    got = _grads(lambda x, w, b: K.layer_norm(x, w, b, 1e-5, backend=backend), [x.float(), w, b], grad)
    ref = _grads(lambda x, w, b: F.layer_norm(x, (n,), w, b, 1e-5), [x.float().double(), w.double(), b.double()],
                 grad)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[2].dtype == weight_dtype and got[3].dtype == weight_dtype
    for g_, r in zip(got, ref):
        # fp32 math on weights rounded to fp32 (fp64 ones) or exact (fp16 ones); fp16 gradients
        # round to fp16
        atol = (1e-3 if g_.dtype == torch.float16 else 1e-5) * max(1.0, r.abs().max().item())
        torch.testing.assert_close(g_.double(), r, atol=atol, rtol=0)


@pytest.mark.parametrize("eps", [-1e-5, float("nan")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_refuses_a_negative_eps(backend, eps):
    # gave NaN rows (sqrt of var + eps < 0) on both backends, without a word
    device = _device(backend)
    x = torch.ones(2, 8, device=device)
    with pytest.raises(ValueError, match=r"eps must be >= 0, got"):
        K.layer_norm(x, torch.ones(8, device=device), torch.zeros(8, device=device), eps, backend=backend)


def test_layer_norm_eps_zero_is_legal():
    x = torch.randn(4, 8, device=DEVICE)  # whole tiles of rows: no padding row of variance 0
    w, b = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    ref = F.layer_norm(x.double(), (8,), w.double(), b.double(), 0.0)
    for backend in BACKENDS:
        torch.testing.assert_close(K.layer_norm(x, w, b, 0.0, backend=backend).double(), ref, atol=1e-5, rtol=0)


def test_torch_backend_refuses_integer_inputs():
    # F.layer_norm / F.gelu failed with "not implemented for 'Long'"-style errors
    x = torch.ones(2, 8, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"floating-point x and residual; got x torch.int64"):
        K.layer_norm(x, torch.ones(8), torch.zeros(8), 1e-5, backend="torch")
    with pytest.raises(TypeError, match=r"floating-point x; got torch.int64"):
        K.bias_gelu(x, torch.zeros(8), backend="torch")


# ------------------------------------------------------------------------- bias_gelu
@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_gelu_reads_a_strided_bias(backend):
    # a column of a (N, 2) table; the kernels read it at base + i (an error of about 2.4)
    device, n = _device(backend), 48
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, n, generator=g, dtype=torch.float64).to(device)
    table = torch.randn(n, 2, generator=g, dtype=torch.float64).to(device)
    grad = torch.randn(5, n, generator=g, dtype=torch.float64).to(device)
    fn = lambda x, t: K.bias_gelu(x, t[:, 1], backend=backend)  # noqa: E731
    ref = lambda x, t: F.gelu(x + t[:, 1])  # noqa: E731
    _check_rule(fn, ref, [x, table], grad)


# --------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [1 - 2**-17, 0.99999])
def test_dropout_p_next_to_one_is_legal(p):
    # p within 2**-16 of 1 rounded to a threshold of 2**15 lanes: ZeroDivisionError in
    # keep_mask, so the CPU dropout and the torch backend's LayerNorm dropout crashed.
    keep, scale = K.keep_mask((64,), p)
    assert keep.dtype == torch.bool and 1.0 <= scale < float("inf")
    x = torch.randn(4, 32)
    y = K.dropout(x, p)
    assert torch.isfinite(y).all()
    y = K.layer_norm(x, torch.ones(32), torch.zeros(32), 1e-5, dropout_p=p, backend="torch")
    assert torch.isfinite(y).all()


def test_dropout_refuses_p_one_on_every_device():
    # keep_mask refused p = 1 on the CPU, F.dropout took it (zeros) on other devices
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\), got 1.0"):
            K.dropout(torch.ones(4, device=device), 1.0)
    assert K.dropout(torch.ones(4, device="meta"), 0.5).shape == (4,)


# -------------------------------------------------------------------------- dispatch
def test_triton_from_the_environment_says_so_where_it_cannot_run():
    # BERTCORE_KERNELS=triton on a machine without a GPU or the interpreter: the error said
    # "backend='triton'", an argument the user never passed.
    env = {k: v for k, v in os.environ.items() if k not in ("BERTCORE_KERNELS", "TRITON_INTERPRET")}
    env["BERTCORE_KERNELS"] = "triton"
    code = ("import torch, bertcore_kernels as K\n"
            "K.layer_norm(torch.ones(2, 4), torch.ones(4), torch.zeros(4), 1e-5)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "backend='triton' (from BERTCORE_KERNELS or use_backend) on a CPU tensor" in done.stderr, done.stderr
