"""Triton varlen flash attention (on the GPU, or the interpreter on CPU) against an fp64
PyTorch reference."""
import importlib
import math

import pytest
import torch

import bertcore_kernels as K
from bertcore_kernels.attention import attention_ref
from bertcore_kernels.attention_philox import _dropout_mask, _keep_bits, _keep_bits_kernel, drawn_dropout_p
from bertcore_kernels.dispatch import interpret_mode
from bertcore_kernels.rng import seed_tensor

from kernel_checks import DEVICE, assert_rule, cu_seqlens_of, record_launches, requires_cuda

attn_mod = importlib.import_module("bertcore_kernels.attention")  # the package rebinds .attention
attn_bwd_mod = importlib.import_module("bertcore_kernels.attention_bwd")
philox_mod = importlib.import_module("bertcore_kernels.attention_philox")
HEADS = 2


def triton_attention(*args, **kwargs):
    return K.attention(*args, backend="triton", **kwargs)


def run(fn, qkv, cu, max_seqlen, grad, dtype, **kwargs):
    """Forward and backward of fn on q, k, v sliced from a fused (T, 3, H, D) tensor
    (non-contiguous views, as the model passes them). Returns out, dq, dk, dv."""
    qkv = qkv.detach().to(dtype).clone().requires_grad_()
    out = fn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, max_seqlen, **kwargs)
    out.backward(grad.to(dtype))
    return (out, *qkv.grad.unbind(1))


def inputs(lengths, head_dim, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, then moved: same numbers anywhere
    total = sum(lengths)
    qkv = torch.randn(total, 3, HEADS, head_dim, generator=g, dtype=torch.float64)
    grad = torch.randn(total, HEADS, head_dim, generator=g, dtype=torch.float64)
    return qkv.to(device), grad.to(device), cu_seqlens_of(lengths, device), max(lengths, default=0)


def check_against_fp64(lengths, head_dim, dtype, device=DEVICE, dropout_p=0.0, seed=None, deterministic=False):
    qkv, grad, cu, max_seqlen = inputs(lengths, head_dim, device=device)
    kw, ref_kw = dict(deterministic=deterministic), {}
    if dropout_p:
        mask = _dropout_mask(cu, max_seqlen, HEADS, dropout_p, seed)
        kw.update(dropout_p=dropout_p, seed=seed)
        ref_kw = dict(dropout_p=drawn_dropout_p(dropout_p), dropout_mask=mask)  # the mask's own p
    tri = run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
    same = run(attention_ref, qkv, cu, max_seqlen, grad, dtype, **ref_kw)
    # fp64 on the same rounded inputs: the error measured is the computation's alone.
    ref = run(attention_ref, qkv.to(dtype), cu, max_seqlen, grad.to(dtype), torch.float64, **ref_kw)
    for name, t, s, r in zip(("out", "dq", "dk", "dv"), tri, same, ref):
        assert t.dtype == dtype
        assert_rule(name, t, s, r, dtype)


# A spread of length mixes and head dims, not their full product: the interpreter is slow.
CASES = [
    (torch.float32, 32, [0, 1, 17, 130]),
    (torch.float32, 64, [17, 3]),
    (torch.float32, 128, [1, 17, 0]),
    (torch.float16, 32, [17, 130]),
    (torch.float16, 64, [0, 1, 17, 5]),
    (torch.float16, 128, [17, 1]),
]


def case_id(case):
    dtype, head_dim, lengths = case
    return f"{str(dtype).removeprefix('torch.')}-d{head_dim}-len{'_'.join(map(str, lengths))}"


@pytest.mark.parametrize("dtype,head_dim,lengths", CASES, ids=[case_id(c) for c in CASES])
def test_attention_fwd_bwd_matches_fp64(dtype, head_dim, lengths):
    check_against_fp64(lengths, head_dim, dtype)


@pytest.mark.parametrize("dtype,head_dim,lengths", CASES[::3], ids=[case_id(c) for c in CASES[::3]])
def test_deterministic_backward_matches_fp64_and_repeats_bitwise(dtype, head_dim, lengths):
    check_against_fp64(lengths, head_dim, dtype, deterministic=True)
    qkv, grad, cu, max_seqlen = inputs(lengths, head_dim)
    a, b = (run(triton_attention, qkv, cu, max_seqlen, grad, dtype, deterministic=True) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_programs_run_longest_sequence_first():
    cu = cu_seqlens_of([3, 0, 130, 17, 130, 1])
    order = attn_mod._sequence_order(cu).cpu()
    assert order.dtype == torch.int32
    lens = (cu[1:] - cu[:-1]).cpu()
    assert sorted(order.tolist()) == list(range(6))
    assert lens[order.long()].tolist() == [130, 130, 17, 3, 1, 0]
    # One argsort per cu_seqlens (the encoder's layers share it), redone when it changes.
    assert attn_mod._sequence_order(cu) is attn_mod._sequence_order(cu)
    cu[1:] += 1                                                                # lengths 4, 0, 130, ...
    assert lens[0] + 1 == (cu[1] - cu[0]).item() and attn_mod._sequence_order(cu).tolist()[3] == 0
    assert attn_mod._sequence_order(cu.clone()) is not attn_mod._sequence_order(cu)


def test_training_after_inference_on_the_same_offsets():
    """The order cached under torch.inference_mode is an inference tensor; a training
    step on the same cu_seqlens must not save it for backward (seen in the GPU benchmark)."""
    qkv, grad, cu, max_seqlen = inputs([17, 3, 9], 32)
    with torch.inference_mode():
        triton_attention(qkv[:, 0].float(), qkv[:, 1].float(), qkv[:, 2].float(), cu, max_seqlen)
    out, *grads = run(triton_attention, qkv, cu, max_seqlen, grad, torch.float32)
    assert all(torch.isfinite(g).all() for g in grads)


def test_odd_head_dim_and_custom_scale_on_contiguous_inputs():
    lengths, head_dim = [9, 20], 40  # head_dim padded to a 64-wide tile with masked lanes
    qkv, grad, cu, max_seqlen = inputs(lengths, head_dim)
    q, k, v = (t.contiguous() for t in qkv.unbind(1))
    outs = []
    for fn, dtype in ((triton_attention, torch.float32), (attention_ref, torch.float32),
                      (attention_ref, torch.float64)):
        q_, k_, v_ = (t.to(dtype).requires_grad_() for t in (q, k, v))
        out = fn(q_, k_, v_, cu, max_seqlen, softmax_scale=0.3)
        out.backward(grad.to(dtype))
        outs.append((out, q_.grad, k_.grad, v_.grad))
    for name, t, s, r in zip(("out", "dq", "dk", "dv"), *outs):
        assert_rule(name, t, s, r, torch.float32)


def test_all_empty_and_single_token_sequences():
    # Empty sequences produce no rows and no NaN; a 1-token sequence attends to itself.
    check_against_fp64([0, 1, 0, 1], 32, torch.float32)
    qkv, grad, cu, _ = inputs([0, 0], 32)
    q = qkv[:, 0].float().requires_grad_()
    out = triton_attention(q, q, q, cu, 0)
    assert out.shape == (0, HEADS, 32)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_single_token_output_is_its_value():
    qkv, _, cu, _ = inputs([1], 64)
    q, k, v = qkv.float().unbind(1)
    torch.testing.assert_close(triton_attention(q, k, v, cu, 1), v)


# ----------------------------------------------------------------------------- dropout
def test_dropout_same_seed_same_result_and_backward_uses_forward_mask():
    check_against_fp64([0, 17, 40], 32, torch.float32, dropout_p=0.2, seed=1234)
    check_against_fp64([17, 1], 64, torch.float16, dropout_p=0.3, seed=7)
    check_against_fp64([40, 0, 17], 32, torch.float32, dropout_p=0.2, seed=2**62 + 3, deterministic=True)


def test_backward_uses_the_seed_saved_by_its_forward():
    # seed=None: the forward draws a device seed; draws made between the forward and the
    # backward (another layer's) must not change the mask the backward regenerates.
    qkv, grad, cu, max_seqlen = inputs([17, 30], 32)

    def grads(draw_between):
        torch.manual_seed(11)
        x = qkv.float().clone().requires_grad_()
        out = triton_attention(x[:, 0], x[:, 1], x[:, 2], cu, max_seqlen, dropout_p=0.3)
        if draw_between:
            triton_attention(x[:, 0], x[:, 1], x[:, 2], cu, max_seqlen, dropout_p=0.3)
        out.backward(grad.float())
        return out, x.grad

    with torch.random.fork_rng(devices=[]):
        (a, ga), (b, gb) = grads(False), grads(True)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def unpack(bits, cu, lengths):
    """(T, H, W) keep-bits -> {b: (H, n, n) bool} per sequence of length n."""
    unpacked = ((bits.cpu()[..., :, None] >> torch.arange(32)) & 1).flatten(2).bool()  # (T, H, 32 W)
    offsets = cu.tolist()
    return {b: unpacked[offsets[b]:offsets[b] + n, :, :n].permute(1, 0, 2) for b, n in enumerate(lengths)}


def test_prebuilt_keep_bits_are_the_redrawn_mask():
    # `_keep_bits` packs exactly the decisions the kernels draw on their tiles
    # (`_dropout_mask`), across word blocks (130 keys: 5 words, blocks of 4) and
    # ragged sequence ends.
    lengths, p = [0, 1, 17, 130, 40], 0.3
    cu, L = cu_seqlens_of(lengths), max(lengths)
    bits = _keep_bits(cu, sum(lengths), L, HEADS, p, seed_tensor(77, DEVICE))        # (T, H, W)
    assert bits.shape == (sum(lengths), HEADS, 5)
    mask = _dropout_mask(cu, L, HEADS, p, 77).cpu()                                  # (B, H, L, L)
    for b, keep in unpack(bits, cu, lengths).items():
        n = lengths[b]
        assert torch.equal(keep, mask[b, :, :n, :n])


def test_saved_keep_bits_are_the_redrawn_mask():
    # The forward's own bits ("saved"), tiles of 32, 64 and 128 keys.
    lengths, p = [0, 1, 17, 130, 40], 0.3
    qkv, _, cu, L = inputs(lengths, 32)
    q, k, v = (t.contiguous().float() for t in qkv.unbind(1))
    mask = _dropout_mask(cu, L, HEADS, p, 77).cpu()
    order = attn_mod._sequence_order(cu)
    for block_n in (32, 64, 128):
        with K.override_launch_configs({(torch.float32, 32, "fwd"): (32, block_n, 4, 1, "saved")}):
            _, _, bits = attn_mod._attention_fwd(q, k, v, cu, order, L, p, 0.25, seed_tensor(77, DEVICE))
        for b, keep in unpack(bits, cu, lengths).items():
            assert torch.equal(keep, mask[b, :, :lengths[b], :lengths[b]]), (block_n, b)


# Tiles of 16 keys (inside one word), 32 (one word), 64 and 128 (two and four words a row).
BITS_CASES = [
    (torch.float32, False, (16, 16, 2, 1), (16, 16, 2, 1)),
    (torch.float32, True, None, None),
    (torch.float16, False, (32, 64, 4, 1), (32, 128, 4, 1)),
    (torch.float16, True, (16, 128, 4, 1), (64, 64, 4, 1)),
]


@pytest.mark.parametrize("mask", ["saved", "prebuilt"])
@pytest.mark.parametrize("dtype,deterministic,fwd,bwd", BITS_CASES,
                         ids=lambda c: str(c).removeprefix("torch.").replace(", ", "-"))
def test_mask_as_bits_gives_the_redrawn_masks_results_bitwise(dtype, deterministic, fwd, bwd, mask):
    # Bits only change where the decisions come from: same outputs and gradients to the
    # bit, and fp64 agreement as the redrawing path has. Two exceptions on a GPU, equal
    # to rounding (one changed decision moves an output by about p * v / L, far more):
    # dQ's atomics add in a fixed order only in the interpreter; and a prebuilt mask
    # read in a forward of fewer than 64 query rows (mma.sync, not wgmma) lets the
    # compiler lay out P @ V's operands with kWidth 2 rather than 4, which orders the
    # products inside each instruction's sum differently (sm_90 TTGIR; on the H200,
    # fp16 (32, 64) and (16, 128) tiles differed, while the same tiles saving the mask
    # and all the fp32 and 64-row tiles were bitwise).
    lengths, d = [0, 1, 17, 130, 70], 32
    qkv, grad, cu, max_seqlen = inputs(lengths, d)
    kw = dict(dropout_p=0.2, seed=31, deterministic=deterministic)
    tiles = {}
    if fwd:
        tiles = {(dtype, d, "fwd"): fwd, (dtype, d, "bwd_det" if deterministic else "bwd"): bwd}
    with K.override_launch_configs(tiles):
        with K.override_launch_configs(K.dropout_mask_configs("redraw", dtype, d)):  # whatever the defaults are
            redrawn = run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
        with K.override_launch_configs(K.dropout_mask_configs(mask, dtype, d)):
            if mask == "saved" and K.launch_config(dtype, d, "fwd").block_n % 32:
                with pytest.raises(ValueError, match="block_n must be a multiple of 32"):
                    run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
                return
            from_bits = run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
            check_against_fp64(lengths, d, dtype, dropout_p=0.2, seed=31, deterministic=deterministic)
    for name, a, b in zip(("out", "dq", "dk", "dv"), redrawn, from_bits):
        if a.is_cuda and name == "dq" and not deterministic:
            torch.testing.assert_close(a, b)
        elif a.is_cuda and mask == "prebuilt":
            torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)  # two fp16 ulps
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("mask,deterministic", [("redraw", False), ("prebuilt", True), ("saved", False)])
def test_batches_past_the_grid_limit_launch_in_slices(monkeypatch, mask, deterministic):
    """CUDA launches at most 65535 programs along a grid's third dimension, where the
    sequences are: a larger batch failed to launch. In slices (here of 2 sequences), the
    outputs, gradients and dropout masks are those of one launch, to the bit."""
    lengths, d, dtype = [0, 1, 17, 130, 40], 32, torch.float32
    qkv, grad, cu, max_seqlen = inputs(lengths, d)
    kw = dict(dropout_p=0.2, seed=31, deterministic=deterministic)
    with K.override_launch_configs(K.dropout_mask_configs(mask, dtype, d)):
        whole = run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
        batches = []   # each launch's programs along the sequences' grid dimension
        for kernel in (attn_mod._attention_fwd_kernel, attn_bwd_mod._attention_bwd_kernel,
                       attn_bwd_mod._attention_bwd_det_kernel, _keep_bits_kernel):
            def launch(*args, grid, kernel_run=kernel.run, **kwargs):
                batches.append(grid[2])
                return kernel_run(*args, grid=grid, **kwargs)
            monkeypatch.setattr(kernel, "run", launch)
        monkeypatch.setattr(attn_mod, "MAX_GRID_BATCH", 2)
        monkeypatch.setattr(philox_mod, "MAX_GRID_BATCH", 2)
        sliced = run(triton_attention, qkv, cu, max_seqlen, grad, dtype, **kw)
    assert max(batches) == 2 and sum(batches) == len(lengths) * (3 if mask == "prebuilt" else 2)
    for name, a, b in zip(("out", "dq", "dk", "dv"), whole, sliced):
        assert torch.equal(a, b), name


def test_dropout_is_repeatable_by_seed():
    qkv, _, cu, max_seqlen = inputs([17, 30], 32)
    q, k, v = qkv.float().unbind(1)
    a = triton_attention(q, k, v, cu, max_seqlen, dropout_p=0.25, seed=5)
    b = triton_attention(q, k, v, cu, max_seqlen, dropout_p=0.25, seed=5)
    c = triton_attention(q, k, v, cu, max_seqlen, dropout_p=0.25, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # seed=None draws from torch's default generator: manual_seed repeats a run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        d = triton_attention(q, k, v, cu, max_seqlen, dropout_p=0.25)
        torch.manual_seed(0)
        e = triton_attention(q, k, v, cu, max_seqlen, dropout_p=0.25)
    assert torch.equal(d, e)


def test_dropout_keep_fraction_and_scaling():
    # q = k = 0 gives uniform probabilities 1/L and v = 1 makes each output the row's
    # kept fraction / (1 - p): the kernel's own mask and scaling, observable. p = 1/3
    # is drawn as 21845 / 2**16 (16-bit decisions), and the scale is that p's exact
    # 1/(1 - p), 7.6e-6 away from 1/(1 - 1/3), so the expectation stays unbiased.
    p, lengths = 1 / 3, [64, 64]
    drawn = drawn_dropout_p(p)
    assert drawn == 21845 / 2**16
    cu, L = cu_seqlens_of(lengths), 64
    zeros = torch.zeros(sum(lengths), HEADS, 32, device=DEVICE)
    out = triton_attention(zeros, zeros, torch.ones_like(zeros), cu, L, dropout_p=p, seed=99)
    mask = _dropout_mask(cu, L, HEADS, p, 99)                                 # (B, H, L, L)
    n = mask.numel()
    keep = mask.float().mean().item()
    assert abs(keep - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)               # 5 sigma
    expected = (mask.double().mean(-1) / (1 - drawn)).permute(0, 2, 1).reshape(-1, HEADS)  # (T, H)
    torch.testing.assert_close(out[..., 0].double(), expected, rtol=1e-6, atol=0)
    assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def within_binomial(frac, p, n, sigmas=5.0):
    """Whether kept fractions `frac` (a tensor of them) are within `sigmas` standard
    deviations of 1 - p for n draws each."""
    return bool(((frac - (1 - p)).abs() <= sigmas * math.sqrt(p * (1 - p) / n)).all())


def test_dropout_keep_fraction_per_head_position_and_lane_and_lanes_independent():
    # One Philox call decides eight keys of a score row, two per 32-bit word
    # (attention_philox): call c of a 32-key block decides keys 8 j + 2 c + k, word j,
    # half k. Each of the eight lanes must keep 1 - p, and lanes, halves of one word and
    # neighbouring calls must be uncorrelated.
    p, B, L = 0.3, 4, 128
    mask = _dropout_mask(cu_seqlens_of([L] * B), L, HEADS, p, 2024).float().cpu()  # (B, H, L, L)
    assert within_binomial(mask.mean(), p, mask.numel())
    assert within_binomial(mask.mean((0, 2, 3)), p, B * L * L)                     # per head
    assert within_binomial(mask.mean((0, 1, 3)), p, B * HEADS * L)                 # per query position
    assert within_binomial(mask.mean((0, 1, 2)), p, B * HEADS * L)                 # per key position
    blocks = mask.view(B, HEADS, L, L // 32, 4, 4, 2)                               # [..., block, j, c, k]
    lanes = blocks.permute(0, 1, 2, 3, 5, 4, 6).reshape(-1, 8)                      # (calls, 8 = j, k)
    assert within_binomial(lanes.mean(0), p, lanes.shape[0])                       # per lane
    n = lanes.shape[0]
    corr = torch.corrcoef(lanes.T)                                                 # (8, 8)
    off_diagonal = corr[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 / math.sqrt(n)
    neighbours = torch.corrcoef(torch.stack([lanes[:-1, 0], lanes[1:, 0]]))[0, 1]  # next call
    assert neighbours.abs() < 5 / math.sqrt(n)
    for q in (0.05, 0.9):                                                          # far ends of p
        m = _dropout_mask(cu_seqlens_of([64]), 64, HEADS, q, 3).float()
        assert within_binomial(m.mean(), q, m.numel())


def test_drawn_dropout_p_rounds_to_16_bits():
    assert drawn_dropout_p(0.0) == 0.0
    assert drawn_dropout_p(0.5) == 0.5
    assert abs(drawn_dropout_p(0.1) - 0.1) < 2**-17
    assert drawn_dropout_p(0.999999) == 1 - 2**-16          # never 1: some keys stay
    tiny = _dropout_mask(cu_seqlens_of([64]), 64, HEADS, 2**-18, 3)  # rounds to 0: keeps every key
    assert bool(tiny.all())


def test_dropout_mask_depends_on_seed_only_through_philox():
    cu = cu_seqlens_of([20])
    a = _dropout_mask(cu, 20, HEADS, 0.5, 1)
    assert torch.equal(a, _dropout_mask(cu, 20, HEADS, 0.5, 1))
    assert not torch.equal(a, _dropout_mask(cu, 20, HEADS, 0.5, 2))
    assert not torch.equal(a[:, 0], a[:, 1])  # heads draw different masks
    two = _dropout_mask(cu_seqlens_of([20, 20]), 20, HEADS, 0.5, 1)
    assert not torch.equal(two[0], two[1])    # so do sequences (c1 = b * H + h)
    assert torch.equal(a, _dropout_mask(cu, 20, HEADS, 0.5, seed_tensor(1, DEVICE)))  # int or device tensor
    assert not torch.equal(a, _dropout_mask(cu, 20, HEADS, 0.5, 2**40 + 1))  # all 63 seed bits count


# ---------------------------------------------------------------------- dispatch, errors
def test_backend_choice(monkeypatch):
    calls = []
    real = attn_mod._attention_fwd
    monkeypatch.setattr(attn_mod, "_attention_fwd", lambda *a: calls.append(1) or real(*a))
    qkv, _, cu, max_seqlen = inputs([5, 3], 32, device="cpu")
    q, k, v = qkv.float().unbind(1)
    ref = K.attention(q, k, v, cu, max_seqlen)                                # auto on CPU: torch
    assert calls == []
    # Forced Triton runs where the kernels can: compiled ones read only GPU tensors.
    q, k, v, cu = (t.to(DEVICE) for t in (q, k, v, cu))
    with K.use_backend("triton"):
        out = K.attention(q, k, v, cu, max_seqlen)
    assert calls == [1]
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)
    if q.is_cuda:
        K.attention(q, k, v, cu, max_seqlen)                                  # auto on CUDA: triton
        assert calls == [1, 1]
        calls.pop()
    with K.use_backend("torch"):
        K.attention(q, k, v, cu, max_seqlen, backend="auto")                  # the override beats auto
        K.attention(q, k, v, cu.cpu(), max_seqlen, backend="triton")          # an explicit backend beats it
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="backend"):
        K.attention(q, k, v, cu, max_seqlen, backend="tpu")
    with pytest.raises(ValueError, match="use_backend"):
        with K.use_backend("cuda"):
            pass


def test_launch_configs_are_a_table_with_a_scoped_override():
    table, LC = attn_mod.LAUNCH_CONFIGS, attn_mod.LaunchConfig
    default = K.launch_config(torch.float16, 64, "bwd")                       # length class "long"
    assert default == table[(torch.float16, 64, "bwd", "long")] == K.launch_config(torch.float16, 64, "bwd", 512)
    assert K.launch_config(torch.float16, 64, "bwd", 128) == table[(torch.float16, 64, "bwd", "short")]
    assert K.launch_config(torch.float16, 40, "bwd") == default               # 40 is in the <= 64 bucket
    default_det = table[(torch.float16, 64, "bwd_det", "long")]
    assert K.launch_config(torch.float16, 100, "fwd") == table[(torch.float16, 128, "fwd", "long")]
    assert all((dt, d, direction, cls) in table for dt in (torch.float16, torch.bfloat16, torch.float32)
               for d in attn_mod.HEAD_DIM_BUCKETS for direction in attn_mod.DIRECTIONS
               for cls in attn_mod.LENGTH_CLASSES)
    with K.override_launch_configs({(torch.float16, 32, "bwd"): (64, 64, 8, 1),
                                    (torch.float16, 64, "fwd", "short"): (16, 16, 2, 1)}):
        assert K.launch_config(torch.float16, 64, "bwd") == LC(64, 64, 8, 1)  # no class: both classes
        assert K.launch_config(torch.float16, 64, "bwd", "short").block_m == 64
        assert K.launch_config(torch.float16, 64, "fwd", 17) == LC(16, 16, 2, 1)
        assert K.launch_config(torch.float16, 64, "fwd", 200) == table[(torch.float16, 64, "fwd", "long")]
        assert K.launch_config(torch.float16, 64, "bwd_det") == default_det
    assert K.launch_config(torch.float16, 64, "bwd") == default
    assert K.launch_config(torch.float16, 64, "fwd", 17) != LC(16, 16, 2, 1)
    assert all(cfg.dropout_mask == "redraw" for cfg in table.values())        # the H200's pick, both classes
    prebuilt_long = {(torch.bfloat16, 64, "fwd", "long"): K.launch_config(torch.bfloat16, 64, "fwd", "long")
                     ._replace(dropout_mask="prebuilt")}
    with K.override_launch_configs(prebuilt_long):
        with K.override_launch_configs({(torch.bfloat16, 64, "fwd"): (128, 64, 8, 2)}):  # tiles: each keeps its source
            assert K.launch_config(torch.bfloat16, 64, "fwd", "long") == LC(128, 64, 8, 2, "prebuilt")
            assert K.launch_config(torch.bfloat16, 64, "fwd", "short") == LC(128, 64, 8, 2, "redraw")
    with pytest.raises(ValueError, match="dropout_mask"):
        with K.override_launch_configs({(torch.float16, 64, "fwd"): (64, 32, 4, 1, "stored")}):
            pass
    saved = K.dropout_mask_configs("saved")                                    # every forward, tiles kept
    assert saved.keys() == {key for key in table if key[2] == "fwd"}
    assert all(cfg == table[key]._replace(dropout_mask="saved") for key, cfg in saved.items())
    assert K.dropout_mask_configs("prebuilt", torch.float16, 40).keys() == {
        (torch.float16, 64, "fwd", "short"), (torch.float16, 64, "fwd", "long")}
    with pytest.raises(ValueError, match="source"):
        K.dropout_mask_configs("stored")
    with pytest.raises(ValueError, match="head_dim <= 256"):
        K.launch_config(torch.float16, 512, "fwd")
    with pytest.raises(ValueError, match="direction"):
        K.launch_config(torch.float16, 64, "backward")
    with pytest.raises(ValueError, match="length class"):
        K.launch_config(torch.float16, 64, "fwd", "medium")


def test_overridden_launch_config_reaches_the_kernel(monkeypatch):
    qkv, grad, cu, max_seqlen = inputs([9, 20], 32)
    q, k, v = (t.float() for t in qkv.unbind(1))
    ref = triton_attention(q, k, v, cu, max_seqlen)
    with K.override_launch_configs({(torch.float32, 32, "fwd"): (16, 16, 2, 1)}):
        seen = []
        real = attn_mod._attention_fwd_kernel
        monkeypatch.setattr(attn_mod, "_attention_fwd_kernel", _GridSpy(real, seen))
        out = triton_attention(q, k, v, cu, max_seqlen)
    assert seen == [(16, 16)]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


class _GridSpy:
    """Stands in for a @triton.jit kernel: records BLOCK_M/BLOCK_N of each launch."""

    def __init__(self, kernel, seen):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append((kwargs["BLOCK_M"], kwargs["BLOCK_N"]))
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_backends_reports_both():
    info = K.backends()
    assert info["torch"].startswith("available")
    assert info["triton"].startswith("available")  # the interpreter, or a GPU


def test_bad_inputs_raise_clear_errors():
    qkv, _, cu, max_seqlen = inputs([5, 3], 32)
    q, k, v = qkv.float().unbind(1)
    with pytest.raises(ValueError, match="one shape"):
        K.attention(q, k[:, :1], v, cu, max_seqlen, backend="triton")
    with pytest.raises(ValueError, match="one shape"):
        K.attention(q[0], k[0], v[0], cu, max_seqlen)
    with pytest.raises(ValueError, match="cu_seqlens"):
        K.attention(q, k, v, cu[None], max_seqlen)
    # Offsets are checked only on the host (on a GPU a check would cost a sync): CPU cu_seqlens.
    with pytest.raises(ValueError, match="total_tokens"):
        K.attention(q, k, v, cu_seqlens_of([5, 2], "cpu"), max_seqlen, backend="triton")
    with pytest.raises(ValueError, match="max_seqlen=4"):
        K.attention(q, k, v, cu.cpu(), 4, backend="triton")
    with pytest.raises(TypeError, match="Python int"):
        K.attention(q, k, v, cu, torch.tensor(5))
    with pytest.raises(ValueError, match="dropout_p"):
        K.attention(q, k, v, cu, max_seqlen, dropout_p=1.0, backend="triton")
    with pytest.raises(TypeError, match="fp16, bf16 and fp32"):
        K.attention(q.double(), k.double(), v.double(), cu, max_seqlen, backend="triton")
    if interpret_mode():
        with pytest.raises(TypeError, match="interpreter"):
            K.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, max_seqlen, backend="triton")
    big = torch.zeros(8, 1, 512, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim <= 256"):
        K.attention(big, big, big, cu, max_seqlen, backend="triton")


# --------------------------------------------------------------------------- GPU only
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_cuda_attention_matches_fp64(dtype, head_dim):
    check_against_fp64([0, 1, 17, 130, 512, 64], head_dim, dtype, device="cuda")
    check_against_fp64([33, 200, 1], head_dim, dtype, device="cuda", dropout_p=0.1, seed=3)
    check_against_fp64([17, 100, 128], head_dim, dtype, device="cuda", dropout_p=0.2, seed=4)  # "short" tiles


@requires_cuda
@pytest.mark.parametrize("mask", ["saved", "prebuilt"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_mask_as_bits_matches_fp64_in_bf16(head_dim, mask):
    # The default tiles of each length class, BERT's dtype, the longest BERT sequence.
    with K.override_launch_configs(K.dropout_mask_configs(mask, torch.bfloat16, head_dim)):
        check_against_fp64([33, 512, 1, 200], head_dim, torch.bfloat16, device="cuda", dropout_p=0.1, seed=3)
        check_against_fp64([17, 100, 128], head_dim, torch.bfloat16, device="cuda", dropout_p=0.2, seed=4,
                           deterministic=True)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_cuda_deterministic_backward_matches_fp64(dtype):
    # The model's head_dim only: each variant costs a compile on a fresh GPU machine.
    check_against_fp64([0, 1, 17, 130, 512, 64], 64, dtype, device="cuda", deterministic=True)
    check_against_fp64([33, 200, 1], 64, dtype, device="cuda", dropout_p=0.1, seed=3, deterministic=True)


# Batches of each length class whose max_seqlen (and keep-bits words, ceil(L / 32))
# is 1, a multiple of 16 or neither: Triton's JIT keys a compile on those for every
# int argument not in do_not_specialize.
NEW_BATCHES = ([5, 17], [130, 3, 64], [512], [1, 2, 3, 4, 99], [128, 7], [300, 129], [32, 64], [481])
BATCH_KERNELS = (attn_mod._attention_fwd_kernel, attn_mod._attention_bwd_kernel,
                 attn_mod._attention_bwd_det_kernel, attn_bwd_mod._attention_bwd_preprocess_kernel, _keep_bits_kernel)


def each_path(lengths, seed):
    """Runs forward and backward on a batch of `lengths` by every path (keep-mask source,
    deterministic or not), yielding the path after each."""
    qkv, grad, cu, max_seqlen = inputs(lengths, 64)
    for source in attn_mod.DROPOUT_MASKS:
        with K.override_launch_configs(K.dropout_mask_configs(source)):
            for deterministic in (False, True):
                run(triton_attention, qkv, cu, max_seqlen, grad, torch.float16, dropout_p=0.1, seed=seed,
                    deterministic=deterministic)
                yield source, deterministic


@requires_cuda
def test_cuda_new_batch_does_not_recompile():
    def compiled():
        return sum(len(cache[0]) for kernel in BATCH_KERNELS for cache in kernel.device_caches.values())

    # The first two batches compile each kernel once per length class (short, long).
    for i, lengths in enumerate(NEW_BATCHES):
        for _ in each_path(lengths, seed=i + 1):
            pass
        if i == 1:
            first = compiled()
    assert compiled() == first


@pytest.mark.skipif(not interpret_mode(), reason="on a GPU test_cuda_new_batch_does_not_recompile counts compiles")
def test_new_batch_reuses_the_compiled_kernels(monkeypatch):
    # The interpreter compiles nothing, so the launches are recorded (not run: only
    # their arguments matter) and keyed as the GPU's JIT would key them: one key per
    # kernel, length class and dropout-mask source. A key that follows the batch is a
    # compile in the middle of a training step (mask_words did, on the H200).
    launches = record_launches(monkeypatch, BATCH_KERNELS)
    keys = {}
    for i, lengths in enumerate(NEW_BATCHES):
        for path in each_path(lengths, seed=i + 1):
            for name, key in launches:
                keys.setdefault((name, attn_mod.length_class(max(lengths)), *path), set()).add(key)
            launches.clear()
    assert {name for name, *_ in keys} == {kernel.__name__ for kernel in BATCH_KERNELS}
    assert all(len(compiled) == 1 for compiled in keys.values()), [k for k, v in keys.items() if len(v) > 1]


@requires_cuda
def test_cuda_fwd_bwd_never_sync_with_the_host():
    qkv, grad, cu, max_seqlen = inputs([17, 300, 0, 64], 64, device="cuda")
    run(triton_attention, qkv, cu, max_seqlen, grad, torch.bfloat16, dropout_p=0.1)   # warm-up: compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for deterministic in (False, True):
            run(triton_attention, qkv, cu, max_seqlen, grad, torch.bfloat16, dropout_p=0.1,
                deterministic=deterministic)
            run(triton_attention, qkv, cu, max_seqlen, grad, torch.bfloat16, deterministic=deterministic)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_torch_path_accepts_a_batch_of_only_empty_sequences():
    q = torch.zeros(0, 2, 32, requires_grad=True)
    out = K.attention(q, q, q, torch.zeros(3, dtype=torch.int32), 0, backend="torch")
    out.sum().backward()
    assert out.shape == (0, 2, 32) and q.grad.shape == (0, 2, 32)


@requires_cuda
def test_cuda_graph_capture_replays_new_lengths_and_fresh_dropout():
    # A captured forward reads cu_seqlens, the program order and the seed from device
    # memory: replays follow new lengths (same total and batch) and draw new masks.
    qkv, _, cu, max_seqlen = inputs([64, 17, 130], 64, device="cuda")
    q, k, v = (t.contiguous() for t in qkv.half().unbind(1))
    new_cu = cu_seqlens_of([130, 64, 17], "cuda")
    static_cu = cu.clone()
    for _ in range(2):  # warm-up: compiles, and the seed state exists before the capture
        triton_attention(q, k, v, static_cu, max_seqlen)
        triton_attention(q, k, v, static_cu, max_seqlen, dropout_p=0.2)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plain = triton_attention(q, k, v, static_cu, max_seqlen)
        dropped = triton_attention(q, k, v, static_cu, max_seqlen, dropout_p=0.2)
    static_cu.copy_(new_cu)
    graph.replay()
    torch.testing.assert_close(plain, triton_attention(q, k, v, new_cu, max_seqlen))
    first = dropped.clone()
    graph.replay()
    assert not torch.equal(first, dropped)
