"""Trainer: learning, checkpoints and exact resume, freezing, NaN guard, accumulation,
multi-task sampling, layer-wise lr decay, and a 2-process gloo run = 1-process run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore import training
from bertcore.masking import make_nsp_pairs
from bertcore.runfolder import load_state
from bertcore.training import NonFiniteLossError, Trainer

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


args, weights = toy.args, toy.weights


@pytest.mark.parametrize("option, message", [
    ({"batch_size": 0}, "batch_size=0 must be >= 1"),
    ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
    ({"weight_decay": -0.01}, "weight_decay=-0.01 must be a finite number >= 0"),
    ({"max_length": 0}, r"max_length=0 leaves no room for text between \[CLS\] and \[SEP\]; use 8 or more"),
    # a negative weight trained the head to be wrong, NaN stopped the run blaming the learning rate
    ({"loss_weights": {"y": -1.0}}, r"loss_weights\['y'\]=-1.0 must be a finite number >= 0"),
    ({"loss_weights": {"y": float("nan")}}, r"loss_weights\['y'\]=nan must be a finite number >= 0"),
    ({"loss_weights": [("y", 2.0)]}, r"loss_weights=\[\('y', 2.0\)\] must be a dict \{head: weight\}"),
    # from a config file: "false" froze the encoder, 2.5 epochs ran as 3, "8" failed deep inside
    ({"freeze_encoder": "false"}, r"freeze_encoder='false'; expected True or False"),
    ({"cuda_graphs": "off"}, r"cuda_graphs='off'; expected True or False"),
    ({"epochs": 2.5}, r"epochs=2.5 must be a whole number"),
    ({"batch_size": "8"}, r"batch_size='8' must be a whole number"),
    ({"eval_every": True}, r"eval_every=True must be a whole number"),
    # a negative norm flipped every gradient's sign (gradient ascent), silently
    ({"max_grad_norm": -1.0}, r"max_grad_norm=-1.0 must be a finite number >= 0 \(0 or None: no clipping\)"),
    ({"seed": "a"}, r"seed='a' must be a whole number in \[0, 2\*\*32\)"),     # was: a traceback at fit()
    ({"seed": -1}, r"seed=-1 must be a whole number in \[0, 2\*\*32\)"),      # numpy refused it at fit()
    ({"logging_steps": -1}, r"logging_steps=-1 must be >= 0"),                # logged every step
    # the last weights were kept, silently
    ({"load_best_at_end": True, "save_checkpoints": False}, "load_best_at_end=True needs save_checkpoints=True"),
])
def test_bad_training_args_name_the_field(option, message):
    with pytest.raises(ValueError, match=message):
        training.TrainingArgs(output_dir="unused", **option)


def test_trainer_args_in_transformers_order_are_refused_by_name(tmp_path, tok):
    with pytest.raises(TypeError, match="second argument is the tokenizer; pass the TrainingArgs as args="):
        Trainer(toy.model(tok), args(tmp_path))   # was: 'TrainingArgs' object is not callable, later


def test_fit_learns_and_writes_outputs(tmp_path, tok):
    model = toy.model(tok)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(96), eval=toy.examples(32, seed=1),
                      args=args(tmp_path, epochs=6), head="toy")
    history = trainer.fit()
    assert len(history) == 6 and history[-1]["step"] == 6 * 12
    assert history[-1]["accuracy"] > 0.8, history
    metrics = trainer.evaluate()
    assert set(metrics) == {"accuracy", "loss"}
    held = toy.examples(32, seed=1)
    predictions = trainer.predict(held)
    assert sum(p == e["label"] for p, e in zip(predictions, held)) / len(held) == metrics["accuracy"]
    for name in ("metrics.jsonl", "curves.png", "last/model/encoder/model.safetensors", "last/trainer_state.pt",
                 "last/manifest.json", "best/model/heads/toy/head.safetensors", "best/manifest.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "best" / "trainer_state.pt").exists()  # best/ is a model, not a resume point
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in records) and sum(r.get("split") == "eval" for r in records) == 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tok, monkeypatch):
    data, held = toy.examples(40), toy.examples(16, seed=1)
    run_args = dict(epochs=2, eval_every=3, batch_size=6, grad_accum_steps=1)

    full = toy.model(tok)
    Trainer(full, tokenizer=tok, train=data, eval=held, args=args(tmp_path / "a", **run_args)).fit()

    class Killed(Exception):
        pass

    original = training.save_checkpoint

    def save_then_die(directory, model, state=None, **kw):
        original(directory, model, state, **kw)
        if state is not None:
            raise Killed

    killed = toy.model(tok)
    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        Trainer(killed, tokenizer=tok, train=data, eval=held, args=args(tmp_path / "b", **run_args)).fit()
    monkeypatch.setattr(training, "save_checkpoint", original)

    resumed = toy.model(tok, seed=123)  # a fresh process would start from other weights
    history = Trainer(resumed, tokenizer=tok, train=data, eval=held,
                      args=args(tmp_path / "b", **run_args)).fit(resume_from=tmp_path / "b" / "last")
    assert history[0]["step"] == 3 and history[-1]["step"] == 14
    expected = weights(full)
    for key, value in weights(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_frozen_encoder_is_unchanged(tmp_path, tok):
    model = toy.model(tok)
    before = weights(model)
    Trainer(model, tokenizer=tok, train=toy.examples(32), args=args(tmp_path, freeze_encoder=True)).fit()
    after = weights(model)
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == key.startswith("encoder."), key


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, tok):
    model = toy.model(tok)
    toy.nan_after(model.heads["toy"], 6)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, eval_every=2), head="toy")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 7.*last good checkpoint"):
        trainer.fit()
    assert load_state(tmp_path / "last")["state"]["step"] == 6
    for value in weights(model).values():
        assert torch.isfinite(value).all()


def test_grad_accumulation_matches_big_batch(tmp_path, tok, monkeypatch):
    """Two accumulated batches of 4 give the optimizer the gradient one batch of 8 gives.
    Compared at the optimizer: the final weights are no test, since AdamW turns a
    gradient's rounding noise near zero into a ±lr step (that compare failed now and
    then), and its scale invariance would hide a missing 1/grad_accum_steps."""
    seen = []   # per optimizer step: {parameter name: gradient}

    def recording(model, targs):
        opt = real_make_optimizer(model, targs)
        named = list(model.named_parameters())
        grads = []
        seen.append(grads)
        opt.register_step_pre_hook(lambda *_: grads.append(
            {n: p.grad.detach().clone() for n, p in named if p.grad is not None}))
        return opt
    real_make_optimizer = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", recording)
    data = toy.examples(32)
    a, b = toy.model(tok, dropout=0.0), toy.model(tok, dropout=0.0)
    Trainer(a, tokenizer=tok, train=data, args=args(tmp_path / "a", batch_size=8, save_checkpoints=False)).fit()
    # Same features per optimizer step only if the 4-batches split the 8-batches.
    tb = Trainer(b, tokenizer=tok, train=data, args=args(tmp_path / "b", batch_size=4, grad_accum_steps=2,
                                                         save_checkpoints=False))
    tb._plan = lambda epoch, big=Trainer(a, tokenizer=tok, train=data, args=args(tmp_path / "a")): [
        (0, idx[h:h + 4]) for _, idx in big._plan(epoch) for h in (0, 4)]
    tb.fit()
    big, accumulated = seen
    assert len(big) == len(accumulated) == 8                   # 2 epochs of 4 optimizer steps
    for key, value in accumulated[0].items():                  # the same weights, the same gradient
        torch.testing.assert_close(value, big[0][key], rtol=1e-4, atol=1e-6, msg=key)
    for step, (x, y) in enumerate(zip(accumulated, big)):      # and so on through the run
        norm = [torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])) for grads in (x, y)]
        assert abs(float(norm[0] / norm[1]) - 1) < 1e-3, (step, norm)


def mlm_model(tok) -> bertcore.TaskModel:
    encoder = toy.model(tok, dropout=0.0).encoder
    torch.manual_seed(1)
    return bertcore.TaskModel(encoder, {"mlm": bertcore.create_head("mlm", encoder.config)}, tokenizer=tok)


def test_accumulated_token_losses_weigh_each_token_alike(tmp_path, tok, monkeypatch):
    """MLM with 1 to 12 labelled tokens per sequence: micro-batches of 2 accumulated in
    pairs give the optimizer the gradient of the batch of 4 they split, and the epoch's
    short last step (one micro-batch) the gradient of that batch. Averaging the
    micro-batches' token means instead (transformers' bug before `num_items_in_batch`)
    weighs a token of a sparse micro-batch more than one of a dense one, and halved the
    short step's gradient."""
    seen = []

    def recording(model, targs):
        opt = real_make_optimizer(model, targs)
        grads = []
        seen.append(grads)
        opt.register_step_pre_hook(lambda *_: grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
        return opt
    real_make_optimizer = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", recording)
    ids = [tok.convert_tokens_to_ids(w) for w in toy.WORDS]
    data = []
    for length, labelled in ((4, 1), (5, 2), (14, 9), (16, 12), (6, 3), (12, 8)):
        sequence = [tok.cls_token_id] + [ids[(length + k) % len(ids)] for k in range(length)] + [tok.sep_token_id]
        data.append({"input_ids": sequence,
                     "labels": [t if 1 <= k <= labelled else -100 for k, t in enumerate(sequence)]})
    one = toy.args(tmp_path / "a", batch_size=4, epochs=1, save_checkpoints=False)
    big = Trainer(mlm_model(tok), tokenizer=tok, train=data, args=one)
    big.fit()
    accumulated = Trainer(mlm_model(tok), tokenizer=tok, train=data,
                          args=toy.args(tmp_path / "b", batch_size=2, grad_accum_steps=2, epochs=1,
                                        save_checkpoints=False))
    accumulated._plan = lambda epoch: [(0, idx[h:h + 2]) for _, idx in big._plan(epoch) for h in (0, 2)
                                       if idx[h:h + 2]]
    assert [len(idx) for _, idx in accumulated._plan(0)] == [2, 2, 2]
    accumulated.fit()
    assert len(seen[0]) == len(seen[1]) == 2                   # a step of 4, then the last 2
    for step, (want, got) in enumerate(zip(*seen)):
        for key, value in got.items():
            torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-7, msg=f"step {step + 1}: {key}")


def test_accumulated_tasks_weigh_as_their_own_steps_would(tok):
    """With several tasks, each head's mean weighs by the share of the step's micro-batches
    that carry it: an x batch beside a y batch weighs 1/2, as beside another x batch, so a
    task's examples weigh alike whichever task shares their step (with proportional
    sampling, at random). Within a head, by units: sequences here (4 and 2)."""
    model = toy.model(tok, heads=("x", "y"))
    model.prepare(("x",), tok)
    features = [f for ex in toy.examples(6) for f in model.heads["x"].encode(ex, tok)]
    x4, x2, y4 = (model.collate(fs, (h,)) for fs, h in ((features[:4], "x"), (features[4:], "x"), (features[:4], "y")))
    mixed = training.step_loss_weights(model, [x4, y4], [("x",), ("y",)], {"y": 3.0}, False, torch.device("cpu"))
    assert mixed == [{"x": 0.5}, {"y": 1.5}]
    same = training.step_loss_weights(model, [x4, x2], [("x",), ("x",)], {"y": 3.0}, False, torch.device("cpu"))
    assert same == [{"x": pytest.approx(4 / 6)}, {"x": pytest.approx(2 / 6)}]
    alone = training.step_loss_weights(model, [x2], [("x",)], {"x": 0.3}, False, torch.device("cpu"))
    assert alone == [{"x": 0.3}]                                 # exactly the user's weight


def test_names_that_are_no_head_are_refused(tmp_path, tok):
    """loss_weights for a misspelt head was silently ignored, and an eval dict keyed by one
    was read as a single data source ("this model has heads [...]; pass head=NAME")."""
    model = toy.model(tok, heads=("x", "y"))
    data = {"x": toy.examples(8), "y": toy.examples(8, seed=3)}
    unknown = r"^loss_weights names 'z', which is no head of this model \(its heads: x, y\)"
    with pytest.raises(ValueError, match=unknown):
        Trainer(model, tokenizer=tok, train=data, args=args(tmp_path, loss_weights={"z": 0.5}))
    with pytest.raises(ValueError, match=r"^eval= names 'dev', 'tst', which are no head of this model"):
        Trainer(model, tokenizer=tok, train=data, eval={"x": toy.examples(4), "dev": [], "tst": []},
                args=args(tmp_path))
    Trainer(model, tokenizer=tok, train={"x": toy.examples(8)}, args=args(tmp_path, loss_weights={"y": 0.0}))
    # every trained head weighed by 0: the run would only decay the weights (was: trained silently)
    with pytest.raises(ValueError, match=r"^loss_weights gives every trained head \(x, y\) weight 0, so nothing"):
        Trainer(model, tokenizer=tok, train=data, args=args(tmp_path, loss_weights={"x": 0.0, "y": 0}))
    Trainer(model, tokenizer=tok, train=data, args=args(tmp_path, loss_weights={"x": 0.0}))   # y still learns
    # several sources in memory: which one "example 2" is in
    bad = {"x": toy.examples(4), "y": [toy.examples(1)[0], {"tokens": ["good"], "tags": ["O"]}]}
    with pytest.raises(bertcore.data.DataError, match=r"^train\['y'\] example 2: has no 'text'"):
        Trainer(model, tokenizer=tok, train=bad, args=args(tmp_path))


def test_a_tuple_key_trains_its_heads_on_the_same_batches(tmp_path, tok):
    """{("mlm", "nsp"): pairs, "z": other} trains MLM and NSP together on the pairs' batches,
    as head=("mlm", "nsp") does for one source, beside z's batches (pretraining beside
    another objective). A tuple key was refused as no head of the model."""
    docs = [[ex["text"] for ex in toy.examples(4, seed=seed)] for seed in range(8)]
    pairs = make_nsp_pairs(docs, tok, max_length=24, seed=0)

    def pretraining_model(*extra):
        encoder = toy.model(tok).encoder
        heads = {name: bertcore.create_head(name, encoder.config) for name in ("mlm", "nsp")}
        return bertcore.TaskModel(encoder, {**heads, **{h: toy.ToyHead(encoder.config) for h in extra}}, tokenizer=tok)

    together = pretraining_model()
    Trainer(together, tokenizer=tok, train=pairs, head=("mlm", "nsp"), args=args(tmp_path / "a")).fit()
    keyed = pretraining_model()
    trainer = Trainer(keyed, tokenizer=tok, train={("mlm", "nsp"): pairs}, args=args(tmp_path / "b"))
    assert [d.heads for d in trainer.train_sets] == [("mlm", "nsp")]
    trainer.fit()
    for name, value in weights(together).items():
        torch.testing.assert_close(weights(keyed)[name], value, rtol=0, atol=0, msg=name)
    mixed = pretraining_model("z")
    trainer = Trainer(mixed, tokenizer=tok, train={("mlm", "nsp"): pairs, "z": toy.examples(8)},
                      args=args(tmp_path / "c"))
    assert [d.heads for d in trainer.train_sets] == [("mlm", "nsp"), ("z",)]
    before = weights(mixed)
    trainer.fit()
    after = weights(mixed)
    for head in ("mlm", "nsp", "z"):   # each head learnt
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"heads.{head}."))
    with pytest.raises(ValueError, match=r"^train= names 'sop', which is no head of this model"):
        Trainer(mixed, tokenizer=tok, train={("mlm", "sop"): pairs}, args=args(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"^train= has an empty tuple as a key"):
        Trainer(mixed, tokenizer=tok, train={(): pairs}, args=args(tmp_path / "d"))
    bad = {("mlm", "nsp"): [pairs[0], {"input_ids": pairs[1]["input_ids"]}], "z": toy.examples(8)}
    with pytest.raises(bertcore.data.DataError, match=r"^train\[\('mlm', 'nsp'\)\] example 2: "):
        Trainer(mixed, tokenizer=tok, train=bad, args=args(tmp_path / "d"))


def test_multitask_predict_evaluate_and_best_follow_the_head_named(tmp_path, tok, caplog):
    """Trainer.predict(head="y") returned the first eval set's (x's) predictions, and an
    unknown head's too; evaluate({typo: ...}) and {} said "pass head=NAME"; which head picks
    the best model with several evaluated was said nowhere."""
    model = toy.model(tok, heads=("x", "y"))
    x, y = toy.examples(8), toy.examples(6, seed=3)
    trainer = Trainer(model, tokenizer=tok, train={"x": x, "y": y}, eval={"x": x, "y": y},
                      args=args(tmp_path, epochs=1, load_best_at_end=True))
    assert len(trainer.predict(head="y")) == len(y) and len(trainer.predict(head="x")) == len(x)
    with pytest.raises(KeyError, match="no head named 'z'"):
        trainer.predict(head="z")
    with pytest.raises(ValueError, match=r"^eval= names 'ys', which is no head of this model"):
        trainer.evaluate({"ys": y})
    with pytest.raises(ValueError, match=r"^train= is an empty dict"):
        Trainer(model, tokenizer=tok, train={}, args=args(tmp_path))
    with caplog.at_level("WARNING", logger="bertcore.training"):
        trainer.fit()
    assert any("follow x/accuracy, the first eval head's main metric: set metric_for_best" in r.getMessage()
               for r in caplog.records)


def test_one_head_evaluated_in_a_multitask_run_keeps_its_name(tmp_path, tok):
    """With x and y trained and y alone evaluated, the keys were bare ("accuracy", and a
    "loss" beside train_loss), and metric_for_best="y/accuracy" was refused."""
    model = toy.model(tok, heads=("x", "y"))
    trainer = Trainer(model, tokenizer=tok, train={"x": toy.examples(8), "y": toy.examples(8, seed=3)},
                      eval={"y": toy.examples(6)}, args=args(tmp_path, epochs=1, metric_for_best="y/accuracy"))
    history = trainer.fit()
    assert {"y/accuracy", "y/loss"} <= set(history[-1]) and "loss" not in history[-1] and "accuracy" not in history[-1]
    assert set(trainer.evaluate({"y": toy.examples(4)})) == {"y/accuracy", "y/loss"}


def test_tokens_per_second_leaves_out_evaluation_time(tmp_path, tok, monkeypatch):
    """The rate's clock ran on through every evaluation and checkpoint: after the first
    one the logged tokens_per_s fell 27x on a toy run."""
    clock = [0.0]

    def tick():
        clock[0] += 0.001
        return clock[0]
    monkeypatch.setattr(training.time, "perf_counter", tick)
    real = Trainer.evaluate

    def slow_evaluate(self, *a, **kw):
        clock[0] += 1000.0                        # an evaluation that takes a long time
        return real(self, *a, **kw)
    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(32), eval=toy.examples(4),
            args=args(tmp_path, epochs=1, batch_size=4, eval_every=2, logging_steps=1)).fit()
    rates = [r["tokens_per_s"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if "tokens_per_s" in r]
    assert len(rates) == 8 and min(rates[2:]) > 0.5 * rates[0], rates


def test_multitask_sampling_and_weights(tmp_path, tok):
    model = toy.model(tok, heads=("x", "y"))
    data = {"x": toy.examples(40), "y": toy.examples(16, seed=3)}
    rr = Trainer(model, tokenizer=tok, train=data, eval={"x": toy.examples(8), "y": toy.examples(8)},
                 args=args(tmp_path, batch_size=8, loss_weights={"y": 0.5}))
    plan = [t for t, _ in rr._plan(0)]
    assert plan == [0, 1, 0, 1, 0, 0, 0]
    prop = Trainer(model, tokenizer=tok, train=data, args=args(tmp_path, batch_size=8, sampling="proportional"))
    assert sorted(t for t, _ in prop._plan(0)) == sorted(plan)
    history = rr.fit()
    assert {"x/accuracy", "y/accuracy", "x/loss", "y/loss"} <= set(history[-1])


def test_layerwise_lr_decay_and_no_decay_groups(tmp_path, tok):
    model = toy.model(tok)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(8), args=args(tmp_path, layerwise_lr_decay=0.5))
    opt = training.make_optimizer(model, trainer.args)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    enc = model.encoder
    assert math.isclose(lr_of[id(enc.embeddings.word_embeddings.weight)], 3e-3 * 0.5 ** 3)
    assert math.isclose(lr_of[id(enc.encoder.layer[1].output.dense.weight)], 3e-3 * 0.5)
    assert math.isclose(lr_of[id(model.heads["toy"].classifier.weight)], 3e-3)
    assert wd_of[id(enc.encoder.layer[0].output.LayerNorm.weight)] == 0.0
    assert wd_of[id(enc.encoder.layer[0].output.dense.bias)] == 0.0
    assert wd_of[id(enc.encoder.layer[0].output.dense.weight)] == 0.01


WORKER = r'''
import sys, torch
sys.path.insert(0, {tests!r})
import toy
from bertcore.training import Trainer, TrainingArgs
from bertcore import Tokenizer
tok = Tokenizer.from_pretrained({tokdir!r})  # Tokenizer.train is not deterministic across processes
model = toy.model(tok, dropout=0.0).double()  # float64: Adam magnifies float32 rounding in tiny grads
args = TrainingArgs(output_dir={out!r}, epochs=2, batch_size={bs}, learning_rate=3e-3, progress=False, eval_every=3)
Trainer(model, tokenizer=tok, train=toy.examples(48), eval=toy.examples(8, seed=1), args=args).fit()
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    torch.save(model.state_dict(), {out!r} + "/final.pt")
'''


def test_ddp_two_processes_match_one(tmp_path, tok):
    tests = str(Path(__file__).parent)
    tokdir = str(tok.save_pretrained(tmp_path / "tok"))
    # A gloo (CPU) comparison: hide any GPU, else the workers would take nccl (one GPU per
    # rank) and the Triton backend, which has no float64.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    runs = {}
    for world, bs in ((1, 8), (2, 4)):
        out = tmp_path / f"w{world}"
        out.mkdir()
        script = tmp_path / f"worker{world}.py"
        script.write_text(WORKER.format(tests=tests, out=str(out), bs=bs, tokdir=tokdir))
        cmd = [sys.executable, str(script)] if world == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[world] = torch.load(out / "final.pt")
        assert (out / "last" / "trainer_state.pt").is_file()
    for key, value in runs[2].items():
        torch.testing.assert_close(value, runs[1][key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_autocast_and_max_steps(tmp_path, tok):
    model = toy.model(tok)
    history = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, bf16=True, max_steps=3, save_checkpoints=False)).fit()
    assert history[-1]["step"] == 3 and math.isfinite(history[-1]["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, weights stay fp32


def test_early_stopping(tmp_path, tok):
    model = toy.model(tok)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(32), eval=toy.examples(8),
                      args=args(tmp_path, epochs=50, learning_rate=0.0, warmup_ratio=0.0, eval_every=1,
                                early_stopping_patience=2, save_checkpoints=False))
    history = trainer.fit()
    assert len(history) == 3  # the first sets the best; two without improvement stop the run


def test_eval_loss_is_one_mean_from_every_entry_point_and_batch_size(tmp_path, tok):
    """TaskModel.evaluate and Trainer.evaluate report the mean per example, whatever the
    batch size: the reference is one cross-entropy over all examples at once."""
    model = toy.model(tok)
    held = toy.examples(37, seed=5)
    model.prepare("toy")
    data = model.encode(held, "toy")
    with torch.no_grad():
        batch = model.collate(data.features, "toy")
        reference = float(torch.nn.functional.cross_entropy(model.eval()(batch, head="toy"), batch["labels"]))
    losses = [model.evaluate(held, head="toy", batch_size=size)["loss"] for size in (1, 4, 37)]
    trainer = Trainer(model, tokenizer=tok, eval=held, args=args(tmp_path, eval_batch_size=5), head="toy")
    losses.append(trainer.evaluate()["loss"])
    for loss in losses:
        assert loss == pytest.approx(reference, rel=1e-6, abs=1e-7), losses


def test_token_head_eval_loss_is_the_mean_per_labelled_token(tok):
    mlm = bertcore.create_head("mlm", toy.model(tok).encoder.config, mlm_probability=0.5)
    model = bertcore.TaskModel(toy.model(tok).encoder, {"mlm": mlm}, tokenizer=tok)
    texts = [{"text": e["text"]} for e in toy.examples(23, seed=2)]
    losses = [model.evaluate(texts, head="mlm", batch_size=size)["loss"] for size in (2, 5, 23)]
    model.prepare("mlm")
    with torch.no_grad():    # eval masks depend only on each text: one batch of all is the reference
        batch = model.eval().collate(model.encode(texts, "mlm").features, "mlm")
        reference = float(model.loss(batch, head="mlm"))
    assert losses == pytest.approx([reference] * 3, rel=1e-6)


def test_learning_rate_schedule_matches_transformers(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    model = toy.model(tok, dropout=0.0)
    Trainer(model, tokenizer=tok, train=toy.examples(40), args=args(
        tmp_path, max_steps=10, batch_size=4, warmup_ratio=0.3, logging_steps=1, save_checkpoints=False)).fit()
    logged = [json.loads(line)["learning_rate"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "learning_rate" in line]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    expected = []
    for _ in range(10):
        optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr()[0])
    assert logged == pytest.approx(expected, rel=1e-12, abs=0)
