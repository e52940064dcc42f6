"""`torch.compile(fullgraph=True)` of code calling `bertcore_kernels.attention`: the
Triton kernels run as the custom ops bertcore::attention_fwd/bwd (on the CPU in the
interpreter), the torch backend traces as plain PyTorch, and gradients match eager.

The CPU tests compile with the "aot_eager" backend (Dynamo + AOTAutograd, what puts
the custom ops and their fake implementations to work) because Inductor's C++
codegen costs half a minute here; the GPU tests use Inductor itself."""
import pytest
import torch

import bertcore_kernels as K

from kernel_checks import DEVICE, cu_seqlens_of, requires_cuda

HEADS, HEAD_DIM = 2, 32
LENGTHS = [17, 0, 23]


def make(device=DEVICE, dtype=torch.float32, lengths=LENGTHS, head_dim=HEAD_DIM):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3, HEADS, head_dim, generator=g).to(device=device, dtype=dtype)
    return qkv, cu_seqlens_of(lengths, device), max(lengths)


def attend(qkv, cu, max_seqlen, backend, **kw):
    # q, k, v as strided slices of a fused projection, as the encoder passes them
    return K.attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, max_seqlen, backend=backend, **kw)


def fwd_bwd(fn, qkv, *args, **kw):
    x = qkv.clone().requires_grad_()
    out = fn(x, *args, **kw)
    out.float().square().sum().backward()
    return out, x.grad


def compiled(backend="aot_eager", **options):
    torch._dynamo.reset()
    return torch.compile(attend, fullgraph=True, backend=backend, **options)


@pytest.mark.parametrize("kw", [{}, {"dropout_p": 0.2, "seed": 5}, {"deterministic": True},
                                {"dropout_p": 0.2, "seed": 5, "dropout_mask": "saved"},
                                {"dropout_p": 0.2, "seed": 5, "dropout_mask": "prebuilt"}],
                         ids=["plain", "dropout-seed", "deterministic", "dropout-saved", "dropout-prebuilt"])
def test_triton_attention_compiles_without_graph_breaks_and_matches_eager(kw):
    qkv, cu, max_seqlen = make()
    kw = dict(kw)
    mask = kw.pop("dropout_mask", "redraw")
    configs = K.dropout_mask_configs(mask, torch.float32, HEAD_DIM)
    with K.override_launch_configs(configs):
        out, grad = fwd_bwd(compiled(), qkv, cu, max_seqlen, "triton", **kw)
    ref, ref_grad = fwd_bwd(attend, qkv, cu, max_seqlen, "triton", **kw)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6)


def test_compiled_dropout_draws_fresh_masks_and_manual_seed_repeats_them():
    qkv, cu, max_seqlen = make()
    fn = compiled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a, ga = fwd_bwd(fn, qkv, cu, max_seqlen, "triton", dropout_p=0.3)
        b, _ = fwd_bwd(fn, qkv, cu, max_seqlen, "triton", dropout_p=0.3)
        torch.manual_seed(1)
        c, gc = fwd_bwd(fn, qkv, cu, max_seqlen, "triton", dropout_p=0.3)
        torch.manual_seed(1)
        e, ge = fwd_bwd(attend, qkv, cu, max_seqlen, "triton", dropout_p=0.3)  # eager draws the same
    assert not torch.equal(a, b)                     # each run of the graph draws a new seed
    assert torch.equal(a, c) and torch.equal(ga, gc)
    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ga, ge, rtol=1e-6, atol=1e-6)


def test_torch_backend_compiles_on_the_cpu():
    # Lengths on the host would need .tolist() (a graph break): compiled, the torch
    # backend takes attention_ref's repadding instead of the per-run path.
    qkv, cu, max_seqlen = make("cpu")
    out, grad = fwd_bwd(compiled(), qkv, cu, max_seqlen, "torch")
    ref, ref_grad = fwd_bwd(attend, qkv, cu, max_seqlen, "torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_custom_ops_pass_opcheck():
    # Schema, fake implementations (shapes, dtypes, devices) and aliasing of the ops
    # against their real runs.
    qkv, cu, max_seqlen = make(lengths=[5, 0, 9])
    q, k, v = (t.contiguous() for t in qkv.unbind(1))
    order = cu.new_tensor([2, 0, 1])
    seed = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    fwd_args = (q, k, v, cu, order, seed, max_seqlen, 0.1, 0.25)
    for mask in ("redraw", "saved", "prebuilt"):  # the mask redrawn from the seed, or as bits (fake shapes differ)
        with K.override_launch_configs(K.dropout_mask_configs(mask, torch.float32, HEAD_DIM)):
            torch.library.opcheck(torch.ops.bertcore.attention_fwd, fwd_args)
            out, lse, keep_bits = torch.ops.bertcore.attention_fwd(*fwd_args)
            assert keep_bits.shape == ((0,) if mask == "redraw" else (14, HEADS, 1))
            torch.library.opcheck(torch.ops.bertcore.attention_bwd,
                                  (torch.randn_like(out), q, k, v, out, lse, cu, order, seed, keep_bits, max_seqlen,
                                   0.1, 0.25, True))


# --------------------------------------------------------------------------- GPU only
@requires_cuda
def test_cuda_inductor_compile_matches_eager():
    qkv, cu, max_seqlen = make("cuda", torch.bfloat16, [130, 1, 0, 64], head_dim=64)  # kernels test_attention built
    for kw in ({}, {"dropout_p": 0.1, "seed": 3}, {"deterministic": True}):
        out, grad = fwd_bwd(compiled("inductor"), qkv, cu, max_seqlen, "auto", **kw)
        ref, ref_grad = fwd_bwd(attend, qkv, cu, max_seqlen, "auto", **kw)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(grad, ref_grad, rtol=2e-2, atol=2e-2)  # dQ's atomics sum in any order


@requires_cuda
def test_cuda_graph_replays_draw_fresh_masks():
    # mode="reduce-overhead" captures CUDA graphs: the seed's kernels are captured too,
    # so each replay reads a new seed from the device state (rng.next_seed).
    qkv, cu, max_seqlen = make("cuda", torch.float16, [64, 17], head_dim=64)
    fn = compiled("inductor", mode="reduce-overhead")
    outs = []
    for _ in range(5):
        out, grad = fwd_bwd(fn, qkv, cu, max_seqlen, "auto", dropout_p=0.3)
        outs.append(out.detach().clone())
        assert torch.isfinite(grad).all()
    later = outs[2:]  # past the warm-up and the recording run: replays
    assert all(not torch.equal(a, b) for i, a in enumerate(later) for b in later[i + 1:])
