"""The encoder on a GPU (Triton attention and LayerNorm) against transformers.BertModel
on the same GPU: fp32 to the last decimals, bf16 autocast within twice HF's own
rounding, and a training step with dropout. Skipped without CUDA."""
import pytest
import torch
import transformers

from bertcore import BertConfig, BertEncoder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# head_dim 64 as in BERT; positions up to 512 so a full-length sequence is in the batch
CONFIG = dict(vocab_size=300, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=1024, max_position_embeddings=512)
LENGTHS = [5, 130, 512, 1, 77]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    BertEncoder(BertConfig(**CONFIG)).save_pretrained(path)
    ours = BertEncoder.from_pretrained(path).cuda()
    theirs = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa").cuda()
    return ours, theirs


def batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqlen = max(lengths)
    ids = torch.randint(5, CONFIG["vocab_size"], (len(lengths), seqlen), generator=g)
    mask = (torch.arange(seqlen)[None] < torch.tensor(lengths)[:, None]).long()
    types = (torch.arange(seqlen)[None] >= seqlen // 3).long() * mask
    return ids.mul(mask).cuda(), mask.cuda(), types.cuda()


def run(model, ids, mask, types, dtype=None, grad=True):
    """(hidden on real tokens, pooled, {param name: grad}) of a fixed random loss."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(ids, attention_mask=mask, token_type_ids=types)
    hidden = out.last_hidden_state[mask.bool()].float()                       # (T, H)
    pooled = out.pooler_output.float()                                         # (B, H)
    g = torch.Generator(device="cuda").manual_seed(1)
    proj = torch.randn(hidden.shape, generator=g, device="cuda")
    if grad:
        ((hidden * proj).sum() + pooled.square().sum()).backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return hidden.detach(), pooled.detach(), grads


def rel(a, b, floor=0.0):
    """Relative error; `floor` keeps a gradient that is zero in exact arithmetic (the
    key bias: softmax ignores a per-query constant) from dividing noise by noise."""
    return ((a - b).norm() / max(b.norm().item(), floor)).item()


def floor(grads):
    return 1e-3 * max(g.norm().item() for g in grads.values())


def test_fp32_matches_transformers_on_gpu(models):
    ours, theirs = models
    ours.eval(), theirs.eval()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 means fp32 on both sides
    try:
        h, p, g = run(ours, *batch())
        h_ref, p_ref, g_ref = run(theirs, *batch())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    assert (h - h_ref).abs().max() < 1e-4
    assert (p - p_ref).abs().max() < 1e-4
    assert g.keys() == g_ref.keys()
    f = floor(g_ref)
    for name in g_ref:
        assert rel(g[name], g_ref[name], f) < 1e-4, name


def test_bf16_autocast_error_within_twice_transformers(models):
    # Both models under bf16 autocast, each compared with HF in fp32: our rounding
    # error may be at most twice HF's own plus a little (the kernel tests' rule).
    ours, theirs = models
    ours.eval(), theirs.eval()
    h_ref, p_ref, g_ref = run(theirs, *batch())
    h_hf, p_hf, g_hf = run(theirs, *batch(), dtype=torch.bfloat16)
    h, p, g = run(ours, *batch(), dtype=torch.bfloat16)
    assert rel(h, h_ref) <= 2 * rel(h_hf, h_ref) + 1e-3
    assert rel(p, p_ref) <= 2 * rel(p_hf, p_ref) + 1e-3
    f = floor(g_ref)
    for name in g_ref:
        assert rel(g[name], g_ref[name], f) <= 2 * rel(g_hf[name], g_ref[name], f) + 1e-2, name


def test_training_step_with_dropout_on_gpu(models):
    ours, _ = models
    ours.train()
    ids, mask, types = batch()
    torch.manual_seed(3)
    a, _, grads = run(ours, ids, mask, types, dtype=torch.bfloat16)
    torch.manual_seed(3)
    b, _, _ = run(ours, ids, mask, types, dtype=torch.bfloat16, grad=False)
    torch.manual_seed(4)
    c, _, _ = run(ours, ids, mask, types, dtype=torch.bfloat16, grad=False)
    ours.eval()
    assert torch.equal(a, b), "same torch seed, same dropout masks"
    assert not torch.equal(a, c)
    assert all(torch.isfinite(t).all() for t in grads.values())
    assert len(grads) == len([p for p in ours.parameters() if p.requires_grad])


def test_packed_forward_does_not_sync_the_host(models):
    """forward_packed with cu_seqlens on the GPU and max_seqlen from the host reads no
    device value (no .item(), no nonzero): value checks wait for BERTCORE_DEBUG=1."""
    import bertcore.model as model_module
    ours, _ = models
    ours.eval()
    ids, mask, types = batch()
    real = mask.bool()
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).int()                 # (B+1,) on the GPU
    packed = (ids[real], types[real])
    torch.cuda.synchronize()
    assert not model_module.DEBUG_CHECKS
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            out = ours(packed[0], token_type_ids=packed[1], cu_seqlens=cu, max_seqlen=max(LENGTHS))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state[real])
    torch.testing.assert_close(out.pooler_output, ref.pooler_output)


def packed_batch():
    """The test batch packed: (ids, types, cu_seqlens) on the GPU, lengths on the host."""
    ids, mask, types = batch()
    real = mask.bool()
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).int()
    return ids[real], types[real], cu


def test_training_step_does_not_sync_the_host(models):
    """Forward, backward, clipping and a fused AdamW step with dropout on, in bf16: no
    device value read on the host once warmed up (issue 13)."""
    ours, _ = models
    ours.train()
    ids, types, cu = packed_batch()
    opt = torch.optim.AdamW(ours.parameters(), lr=0.0, fused=True)   # lr 0: leave the shared weights alone

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = ours(ids, token_type_ids=types, cu_seqlens=cu, max_seqlen=max(LENGTHS))
        (out.last_hidden_state.float().square().mean() + out.pooler_output.float().square().mean()).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ours.eval()


def test_bucketed_batch_matches_on_gpu(models):
    """Padding to a bucket (Triton kernels, fp32) leaves the real sequences' outputs as they were."""
    from bertcore.buckets import Buckets, pad_batch
    ours, _ = models
    ours.eval()
    ids, types, cu = packed_batch()
    shape = Buckets(8).shape(LENGTHS)
    padded = pad_batch({"input_ids": ids.cpu(), "token_type_ids": types.cpu(), "cu_seqlens": cu.cpu(),
                        "max_seqlen": max(LENGTHS)}, shape)
    with torch.no_grad():
        ref = ours(ids, token_type_ids=types, cu_seqlens=cu, max_seqlen=max(LENGTHS))
        out = ours(padded["input_ids"].cuda(), token_type_ids=padded["token_type_ids"].cuda(),
                   cu_seqlens=padded["cu_seqlens"].cuda(), max_seqlen=padded["max_seqlen"])
    torch.testing.assert_close(out.last_hidden_state[:ids.shape[0]], ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooler_output[:len(LENGTHS)], ref.pooler_output, rtol=1e-5, atol=1e-5)
    assert out.pooler_output[len(LENGTHS) + shape.pad_slots:].eq(0).all()   # zero-length sequences


def test_forward_replayed_from_a_cuda_graph_matches_eager(models):
    """Two batches of one bucket: captured on the first, replayed for the second."""
    from bertcore.buckets import Buckets, pad_batch
    from bertcore.cudagraphs import GraphCache
    ours, _ = models
    ours.eval()
    buckets = Buckets(8)
    batches = []
    for lengths in ([5, 130, 200, 1, 77], [9, 150, 180, 3, 60, 7]):
        g = torch.Generator().manual_seed(len(lengths))
        ids = torch.randint(5, CONFIG["vocab_size"], (sum(lengths),), generator=g)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        padded = pad_batch({"input_ids": ids, "cu_seqlens": cu, "max_seqlen": max(lengths)}, buckets.shape(lengths))
        batches.append({k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in padded.items()})
    assert len({(b["input_ids"].shape, b["cu_seqlens"].shape, b["max_seqlen"]) for b in batches}) == 1

    @torch.no_grad()
    def forward(inp):
        out = ours(inp["input_ids"], cu_seqlens=inp["cu_seqlens"], max_seqlen=inp["max_seqlen"])
        return out.last_hidden_state, out.pooler_output

    cache = GraphCache(forward, warmup=1, name="test forward")
    for b in batches + batches:
        inputs = {k: b[k] for k in ("input_ids", "cu_seqlens", "max_seqlen")}
        hidden, pooled = cache(inputs, key="bucket")
        ref_hidden, ref_pooled = forward(b)
        torch.testing.assert_close(hidden, ref_hidden)
        torch.testing.assert_close(pooled, ref_pooled)
    assert cache.graphs == 1 and cache.failed is None
