"""CUDA-graph steps (bertcore.cudagraphs).

On the CPU: the training step's logic without the capture (the same updates as the
Trainer's eager step, only parameters that get gradients move, a non-finite step
leaves the weights alone). On a GPU (skipped here, run by benchmarks/gpu_suite.sh):
graphs against eager (same losses with dropout off, fresh masks with it on), no host
sync in steady state (`set_sync_debug_mode("error")`), a failing capture falls back
with one logged reason, a cache captures after another's graphs were freed, the
Trainer and `TaskModel.predict` on graphs."""
import gc
import logging
import sys
from pathlib import Path

import pytest
import torch

from bertcore import cudagraphs
from bertcore.runfolder import load_state
from bertcore.training import NonFiniteLossError, Trainer, make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


class Eager:
    """GraphCache stand-in for the CPU: every call runs the function."""

    graphs, failed, memory_bytes = 0, None, 0

    def __init__(self, fn, warmup=1, name=""):
        self.fn = fn

    def __call__(self, inputs, key):
        return self.fn(inputs)


def batches(model, tok, n, size=8, heads=("toy",), seed=0):
    data = model.encode(toy.examples(n * size, seed=seed), heads, tok)
    buckets = model.buckets(size)
    return [model.collate(data.features[i:i + size], heads, buckets) for i in range(0, n * size, size)]


def eager_step(model, optimizer, batch, heads, max_norm=1.0):
    """The Trainer's eager step (accumulation 1)."""
    loss = model.compute_loss(model(batch, head=list(heads)), batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def args(tmp_path, **kw):
    return toy.args(tmp_path, **{"learning_rate": 1e-3, "weight_decay": 0.01, **kw})


def test_train_step_logic_equals_the_eager_step_on_cpu(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
    ours, theirs = toy.model(tok, dropout=0.0, heads=("toy", "other")), toy.model(tok, dropout=0.0, heads=("toy", "other"))
    opt_ours, opt_theirs = make_optimizer(ours, args(tmp_path)), make_optimizer(theirs, args(tmp_path))
    step = cudagraphs.TrainStep(ours, opt_ours, 1.0)
    assert all(isinstance(g["lr"], torch.Tensor) and g["capturable"] for g in opt_ours.param_groups)
    other = {n: p.detach().clone() for n, p in ours.heads["other"].named_parameters()}
    for batch in batches(ours, tok, 3):
        loss, bad, norm = step(batch, ("toy",)).tolist()
        assert bad == 0 and norm > 0
        assert abs(loss - eager_step(theirs, opt_theirs, batch, ("toy",))) < 1e-5
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
        assert p.grad is None
    for name, p in ours.heads["other"].named_parameters():   # no gradient, so no weight decay either
        assert torch.equal(p, other[name]), name


def test_no_gradient_memory_is_live_during_the_forward(tok, tmp_path, monkeypatch):
    """The graphed step's gradients are temporaries made by the backward, as in an eager
    step. Buffers kept across steps are all live at the forward's activation peak: on an
    H200 that put bert-base's graphed step 100-300 MB above transformers'."""
    monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
    model = toy.model(tok, dropout=0.0)
    step = cudagraphs.TrainStep(model, make_optimizer(model, args(tmp_path)), 1.0)
    live = []
    model.register_forward_pre_hook(lambda module, inputs: live.append(
        sum(p.grad is not None for p in module.parameters())))
    for batch in batches(model, tok, 3):
        step(batch, ("toy",))
    assert live == [0, 0, 0]


def test_non_finite_step_leaves_weights_and_optimizer_alone(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
    model = toy.model(tok, dropout=0.0)
    opt = make_optimizer(model, args(tmp_path))
    step = cudagraphs.TrainStep(model, opt, 1.0)
    first, second = batches(model, tok, 2)
    step(first, ("toy",))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    with torch.no_grad():
        model.heads["toy"].classifier.bias[0] = float("nan")
    loss, bad, _ = step(second, ("toy",)).tolist()
    assert bad == 1.0
    with torch.no_grad():
        model.heads["toy"].classifier.bias[0] = before["heads.toy.classifier.bias"][0]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    for m, p in zip(moments, model.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], m)


def test_checkpointed_optimizer_state_is_portable(tok, tmp_path, monkeypatch):
    """Graph steps keep the lr in a tensor and capturable on; what a checkpoint saves is
    the eager form, so an eager (CPU) run resumes from it."""
    monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
    model = toy.model(tok)
    opt = make_optimizer(model, args(tmp_path))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    step = cudagraphs.TrainStep(model, opt, 1.0)
    step(batches(model, tok, 1)[0], ("toy",))
    scheduler.step()
    saved_opt, saved_sched = cudagraphs.portable(opt.state_dict()), cudagraphs.portable(scheduler.state_dict())
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in saved_opt["param_groups"])
    assert saved_sched["_last_lr"] == [pytest.approx(5e-4)] * len(opt.param_groups)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)            # the live optimizer is untouched
    fresh = make_optimizer(toy.model(tok), args(tmp_path))
    fresh.load_state_dict(saved_opt)
    assert fresh.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """The Trainer's and TaskModel.run's CUDA-graph paths on the CPU: graphs "usable",
    every captured call run eagerly (bucketing, TrainStep, lr tensors all as on a GPU)."""
    monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
    monkeypatch.setattr(cudagraphs, "usable", lambda device: True)


@pytest.mark.parametrize("heads", [("toy",), ("toy", "other")])
def test_trainer_graph_path_matches_eager_on_cpu(tok, tmp_path, monkeypatch, heads):
    histories = []
    for graphs in (False, None):
        if graphs is None:
            monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
            monkeypatch.setattr(cudagraphs, "usable", lambda device: True)
        model = toy.model(tok, dropout=0.0, heads=heads)
        train = {h: toy.examples(40, seed=i) for i, h in enumerate(heads)} if len(heads) > 1 else toy.examples(48)
        trainer = Trainer(model, tok, train=train, eval=toy.examples(16, seed=9) if len(heads) == 1 else None,
                          args=args(tmp_path / str(graphs), epochs=2, eval_every=3, cuda_graphs=graphs), head=heads[0])
        histories.append(trainer.fit())
        assert (trainer.graph_stats is not None) == (graphs is None)
    assert len(histories[0]) == len(histories[1]) > 2
    for e, g in zip(*histories):
        assert e.keys() == g.keys() and e["step"] == g["step"]
        for key in e:
            assert g[key] == pytest.approx(e[key], abs=1e-5), (key, e, g)


def test_trainer_graph_path_stops_on_nan_with_weights_unharmed(tok, tmp_path, graphs_on_cpu):
    model = toy.model(tok)
    toy.nan_after(model.heads["toy"], 6)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, eval_every=2), head="toy")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 7.*last good checkpoint"):
        trainer.fit()
    assert trainer.graph_stats is not None
    saved = load_state(tmp_path / "last")
    assert saved["state"]["step"] == 6
    assert all(isinstance(g["lr"], float) for g in saved["optimizer"]["param_groups"])
    for name, value in toy.weights(model).items():
        assert torch.isfinite(value).all(), name


def test_cuda_graphs_stay_off_on_the_cpu(tok, tmp_path, caplog):
    trainer = Trainer(toy.model(tok), tok, train=toy.examples(16), head="toy",
                      args=args(tmp_path, epochs=1, cuda_graphs=True, device="cpu"))   # CPU even on a GPU machine
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert "training eagerly" in caplog.text


def test_collator_checks_token_values_on_the_host_for_a_gpu_model(tok, monkeypatch):
    """On a GPU the encoder skips value checks (each would be a device sync): the collator
    makes them on the host batch instead."""
    model = toy.model(tok)
    feature = model.encode(toy.examples(1), "toy", tok).features[0]
    bad = {**feature, "input_ids": [tok.vocab_size + 5] + feature["input_ids"][1:]}
    model.collate([bad], "toy")                            # a CPU model: its forward checks
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(ValueError, match="vocab_size"):
        model.collate([bad], "toy")


# ---- on a GPU ---------------------------------------------------------------------------------


def cuda_pair(tok, dropout=0.0, heads=("toy",)):
    a, b = toy.model(tok, dropout=dropout, heads=heads), toy.model(tok, dropout=dropout, heads=heads)
    return a.cuda().train(), b.cuda().train()


@needs_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_graph_steps_follow_the_eager_trajectory(tok, tmp_path, dtype):
    graphed, eager = cuda_pair(tok)
    opt_g, opt_e = make_optimizer(graphed, args(tmp_path)), make_optimizer(eager, args(tmp_path))
    cudagraphs.make_capturable(opt_e)                     # the same (float32 tensor) learning rate
    step = cudagraphs.TrainStep(graphed, opt_g, 1.0, dtype=dtype)
    data = batches(graphed, tok, 4) * 2                   # every bucket seen more than once: replays
    for batch in data:
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss_g = step(batch, ("toy",))[0].item()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss_e = eager_step(eager, opt_e, batch, ("toy",))
        assert abs(loss_g - loss_e) < (2e-2 if dtype else 1e-4), (loss_g, loss_e)
    assert step.cache.graphs >= 1 and step.cache.failed is None and step.memory_bytes > 0


@needs_cuda
def test_replays_draw_fresh_dropout_masks(tok, tmp_path):
    model = toy.model(tok, dropout=0.3).cuda().train()
    step = cudagraphs.TrainStep(model, make_optimizer(model, args(tmp_path, learning_rate=0.0)), 1.0)
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batches(model, tok, 1)[0].items()}
    losses = [step(batch, ("toy",))[0].item() for _ in range(5)]   # lr 0: only dropout changes the loss
    assert step.cache.graphs == 1
    assert len(set(losses[2:])) == 3, losses


@needs_cuda
def test_no_host_sync_in_steady_state(tok, tmp_path):
    model = toy.model(tok, dropout=0.1).cuda().train()
    opt = make_optimizer(model, args(tmp_path))
    step = cudagraphs.TrainStep(model, opt, 1.0)
    eager = cudagraphs.TrainStep(model, opt, 1.0)
    eager.cache.failed = "eager on purpose"                # the same step, never captured
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batches(model, tok, 1)[0].items()}
    for _ in range(3):                                     # warm-up, capture, replay
        step(batch, ("toy",)), eager(batch, ("toy",))
    model.eval()
    forward = cudagraphs.forward_of(model)
    for _ in range(3):
        forward(batch, ("toy",))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(batch, ("toy",))                              # replay
        eager(batch, ("toy",))                             # eager: forward, backward, clip, AdamW
        forward(batch, ("toy",))                           # inference replay
        with torch.no_grad():
            model(batch, head=["toy"])                     # eager inference
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
def test_failed_capture_falls_back_once_with_its_reason(caplog):
    calls = []

    def fn(inputs):
        calls.append(1)
        x = inputs["x"] * 2
        if torch.cuda.is_current_stream_capturing():
            float(x.sum())                                 # a host sync: capture fails
        return x

    cache = cudagraphs.GraphCache(fn, warmup=1, name="test step")
    x = torch.ones(4, device="cuda")
    with caplog.at_level(logging.WARNING):
        outs = [cache({"x": x}, "k") for _ in range(4)]
    assert cache.failed and cache.graphs == 0
    assert all(torch.equal(o, x * 2) for o in outs)
    assert caplog.text.count("running it eagerly") == 1
    # The failure leaves the process usable: random ops run eagerly, and a new cache (in the
    # pool of its own) captures a step that draws dropout masks (seen on an H100: without the
    # recovery every later capture failed and eager dropout raised "Offset increment").
    torch.nn.functional.dropout(x, 0.5)
    dropped = cudagraphs.GraphCache(lambda inp: torch.nn.functional.dropout(inp["x"], 0.5), name="dropout")
    masks = [dropped({"x": torch.ones(4096, device="cuda")}, "k").clone() for _ in range(4)]
    assert dropped.graphs == 1 and dropped.failed is None
    assert not torch.equal(masks[2], masks[3])                 # replays draw fresh masks


@needs_cuda
def test_a_cache_captures_after_another_caches_graphs_were_freed():
    """Each cache has a memory pool of its own. With one pool for the process, freeing a
    cache's graphs while one of its outputs was still held left the pool with no users,
    and the next capture into it failed an allocator assert ("use_count > 0"): on an
    H200, the Trainer's graphs fell back to eager after an earlier test's graphs died."""
    x = torch.ones(4096, device="cuda")
    first = cudagraphs.GraphCache(lambda inp: inp["x"] * 2, name="first")
    held = [first({"x": x}, "k") for _ in range(3)][-1]   # a replay's output, in first's pool
    assert first.graphs == 1
    del first
    gc.collect()
    second = cudagraphs.GraphCache(lambda inp: inp["x"] + 1, name="second")
    outs = [second({"x": x}, "k") for _ in range(3)]
    assert second.graphs == 1 and second.failed is None
    assert torch.equal(outs[-1], x + 1) and torch.equal(held, x * 2)


@needs_cuda
@pytest.mark.parametrize("heads", [("toy",), ("toy", "other")])
def test_trainer_on_graphs_matches_eager(tok, tmp_path, heads):
    """Single and multi-task (a graph per task and bucket); eager batches keep working."""
    histories = []
    for graphs in (True, False):
        model = toy.model(tok, dropout=0.0, heads=heads)
        train = {h: toy.examples(48, seed=i) for i, h in enumerate(heads)} if len(heads) > 1 else toy.examples(64)
        trainer = Trainer(model, tok, train=train, eval=toy.examples(16, seed=9) if len(heads) == 1 else None,
                          args=args(tmp_path / str(graphs), epochs=2, cuda_graphs=graphs), head=heads[0])
        histories.append(trainer.fit())
        assert (trainer.graph_stats is not None) == graphs
        if graphs:
            assert trainer.graph_stats["graphs"] >= len(heads) and not trainer.graph_stats["failed"]
    for g, e in zip(*histories):
        assert abs(g["train_loss"] - e["train_loss"]) < 1e-4, (g, e)
        assert abs(g.get("loss", 0.0) - e.get("loss", 0.0)) < 1e-4, (g, e)


@needs_cuda
def test_predict_on_graphs_matches_eager(tok):
    model = toy.model(tok).cuda().eval()
    texts = [e["text"] for e in toy.examples(40)]
    graphed = model.predict(texts, batch_size=8)
    model.cuda_graphs = False
    assert model.predict(texts, batch_size=8) == graphed
    assert cudagraphs.forward_of(model).cache.graphs >= 1


def test_batches_the_buckets_leave_out_keep_their_loss_weights(tok, tmp_path, monkeypatch):
    """MLM batches are not bucketed: under graphs they run the eager step, and must weigh
    their head as the eager path does (they once came with no weights: every head at 1;
    a weight of 0.01 moves AdamW's steps through the clipping)."""
    import bertcore

    def run(graphs, weights):
        if graphs is None:
            monkeypatch.setattr(cudagraphs, "GraphCache", Eager)
            monkeypatch.setattr(cudagraphs, "usable", lambda device: True)
        encoder = toy.model(tok, dropout=0.0).encoder
        torch.manual_seed(1)
        model = bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", encoder.config)}, tokenizer=tok)
        trainer = Trainer(model, tok, train=[{"text": x["text"]} for x in toy.examples(32)],
                          args=args(tmp_path / f"{graphs}-{weights}", epochs=1, cuda_graphs=graphs,
                                    loss_weights=weights or {}, save_checkpoints=False))
        trainer.fit()
        assert (trainer.graph_stats is not None) == (graphs is None)
        return toy.weights(model)
    eager, graphs, unweighted = run(False, {"mlm": 0.01}), run(None, {"mlm": 0.01}), run(None, None)
    for key, value in eager.items():
        torch.testing.assert_close(graphs[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(unweighted[k], v, atol=1e-5) for k, v in eager.items())
