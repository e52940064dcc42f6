"""The encoder's CPU fast path: K.attention's torch backend per run of equal lengths,
the dropout attention Function, the fused-QKV weight cache and its autograd Function."""
import importlib

import bertcore_kernels as K
import pytest
import torch
from bertcore_kernels.attention_torch import _DropoutAttention, attention_runs, equal_length_runs

from bertcore import BertConfig, BertEncoder
from bertcore.model import QKV


@pytest.mark.parametrize("lengths", [[5, 5, 5], [3, 7, 7, 0, 2, 2, 2, 1], [0, 0], [9]])
def test_attention_runs_matches_reference(lengths):
    torch.manual_seed(0)
    total, heads, hd = sum(lengths), 2, 8
    qkv = torch.randn(total, 3, heads, hd, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    runs = equal_length_runs(cu.tolist())
    assert sum(n for n, _ in runs) == len(lengths) and sum(n * l for n, l in runs) == total
    ours = attention_runs(*qkv.unbind(1), runs)
    via_public = K.attention(*qkv.unbind(1), cu, max(lengths))                 # auto on CPU: the same path
    assert ours.shape == (total, heads, hd) and torch.equal(ours, via_public)
    if not total:
        return
    ref = K.attention_ref(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, max(lengths))
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, qkv, g)[0], torch.autograd.grad(ref, qkv, g)[0])


def test_torch_backend_takes_the_runs_path_for_host_lengths(monkeypatch):
    attention_module = importlib.import_module("bertcore_kernels.attention")  # the package rebinds .attention
    calls = []
    monkeypatch.setattr(attention_module, "attention_ref", lambda *a, **k: calls.append("ref"))
    q = torch.randn(7, 2, 8)
    out = K.attention(q, q, q, torch.tensor([0, 3, 7], dtype=torch.int32), 4, backend="torch")
    assert calls == [] and out.shape == (7, 2, 8)


def test_equal_length_runs():
    assert equal_length_runs([0, 4, 8, 11, 11, 11, 13]) == [(2, 4), (1, 3), (2, 0), (1, 2)]


def test_dropout_attention_against_explicit_mask():
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    p = 0.3
    torch.manual_seed(1)
    out = _DropoutAttention.apply(q, k, v, p, 8 ** -0.5)
    torch.manual_seed(1)
    keep, scale = K.keep_mask((2, 3, 7, 7), p)
    ref = ((q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1) * keep * scale) @ v
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_torch_backend_dropout_in_training_uses_the_lean_function():
    """The public op, not only the Function: dropout with grad enabled and no seed
    draws the same keep-mask as `_DropoutAttention` from the global RNG."""
    lengths, heads, hd, p = [4, 4, 2], 2, 8, 0.25
    qkv = torch.randn(sum(lengths), 3, heads, hd, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    torch.manual_seed(3)
    out = K.attention(*qkv.unbind(1), cu, 4, dropout_p=p)
    torch.manual_seed(3)
    ref = attention_runs(*qkv.unbind(1), equal_length_runs(cu.tolist()), p)
    assert torch.equal(out, ref) and out.requires_grad


def test_fused_qkv_cache_follows_parameter_updates():
    qkv = QKV(BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32))
    x = torch.randn(5, 16)

    def plain():
        return torch.cat([qkv.query(x), qkv.key(x), qkv.value(x)], -1)
    with torch.no_grad():
        torch.testing.assert_close(qkv(x), plain())
        qkv.key.weight.add_(1.0)                       # in place: bumps _version
        torch.testing.assert_close(qkv(x), plain())
    with torch.inference_mode():
        torch.testing.assert_close(qkv(x), plain())
    out = qkv(x.requires_grad_())                      # grad mode: the autograd Function
    ref = plain()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *qkv.parameters()], g)
    refs = torch.autograd.grad(ref, [x, *qkv.parameters()], g)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b)


def test_training_step_with_dropout_runs_and_frozen_layers_get_no_grad():
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32))
    enc.train().freeze(embeddings=True, layers=[0])
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    out = enc(ids, attention_mask=mask)
    out.last_hidden_state.square().mean().backward()
    assert enc.encoder.layer[0].attention.self.query.weight.grad is None
    assert enc.encoder.layer[1].attention.self.query.weight.grad is not None
    assert torch.isfinite(enc.encoder.layer[1].attention.self.key.weight.grad).all()


def test_training_step_under_bf16_autocast():
    torch.manual_seed(0)
    enc = BertEncoder(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32)).train()
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(ids, attention_mask=mask)
        loss = out.last_hidden_state.float().square().mean()
    loss.backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_fused_qkv_saves_its_input_in_the_autocast_dtype():
    """Under autocast the fp32 residual stream is saved as the bf16 the product reads
    (half the bytes), with the same gradients as saving it whole and casting later."""
    torch.manual_seed(0)
    qkv = QKV(BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32))
    x = torch.randn(7, 16, requires_grad=True)
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = qkv(x)
    assert out.dtype == torch.bfloat16
    assert [t.dtype for t in saved if t.shape == x.shape] == [torch.bfloat16]
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *qkv.parameters()], g)
    assert grads[0].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):                      # autocast's own Linear
        ref = torch.cat([qkv.query(x), qkv.key(x), qkv.value(x)], -1)
    ref_grads = torch.autograd.grad(ref, [x, *qkv.parameters()], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
