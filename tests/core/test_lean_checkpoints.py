"""Checkpoints hold every weight once: a frozen encoder is pointed at (path + SHA-256),
best/ is hard links to last/ when they agree, the finished run keeps no optimizer state,
keep-last-N, and heads save and load alone."""
import os
import sys
from pathlib import Path

import pytest
import torch

import bertcore
from bertcore.checkpoint import CheckpointError
from bertcore.runfolder import load_state
from bertcore.training import Trainer, TrainingArgs

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "toy_plugin")


@pytest.fixture(scope="module")
def tok():
    return toy.tokenizer()


def args(tmp_path, **kw):
    return TrainingArgs(**{**dict(output_dir=str(tmp_path / "run"), epochs=2, batch_size=8, learning_rate=3e-3,
                                  progress=False, eval_every=3), **kw})


def saved_model(tok, tmp_path):
    """A toy model whose encoder comes from a folder, as a user's would."""
    toy.model(tok).encoder.save_pretrained(tmp_path / "base")
    model = toy.model(tok)
    model.encoder = bertcore.BertEncoder.from_pretrained(tmp_path / "base")
    return model


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_frozen_encoder_checkpoints_hold_the_heads_only_and_load(tmp_path, tok):
    model = saved_model(tok, tmp_path)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
                      args=args(tmp_path, freeze_encoder=True))
    trainer.fit()
    last = tmp_path / "run" / "last"
    assert not (last / "model" / "encoder").exists()
    assert [p.name for p in last.rglob("*.safetensors")] == ["head.safetensors"]       # the head's weights only
    loaded = bertcore.TaskModel.from_pretrained(last / "model")
    held = toy.examples(8, seed=2)
    assert loaded.predict([e["text"] for e in held], head="toy") == model.predict([e["text"] for e in held], head="toy")
    with open(tmp_path / "base" / "model.safetensors", "r+b") as f:     # the base changes under the checkpoint
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"points at the encoder weights .*base/model.safetensors, which "
                                              r"changed since it was saved"):
        bertcore.TaskModel.from_pretrained(last / "model")


def test_full_checkpoints_hold_each_weight_once_and_best_is_links(tmp_path, tok):
    model = toy.model(tok)
    trainer = Trainer(model, tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
                      args=args(tmp_path, learning_rate=0.0, warmup_ratio=0.0))   # every eval ties: best = first
    trainer.fit()
    run = tmp_path / "run"
    weights = [p for p in (run / "last").rglob("*.safetensors")]
    stored = sum(p.stat().st_size for p in weights)
    params = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    assert params <= stored < params * 1.05                       # each weight once (plus headers)
    final = load_state(run / "last")
    assert final["complete"] and "optimizer" not in final          # a finished run needs no optimizer state
    Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
            args=args(tmp_path, learning_rate=0.0, warmup_ratio=0.0)).fit(resume_from=True)   # and resumes to done


def test_best_is_hard_links_to_last(tmp_path, tok):
    trainer = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
                      args=args(tmp_path, metric_for_best="loss"))
    trainer.fit()
    run = tmp_path / "run"
    if trainer.state.best_step == trainer.state.step:              # the last evaluation was the best
        a = run / "last" / "model" / "encoder" / "model.safetensors"
        b = run / "best" / "model" / "encoder" / "model.safetensors"
        assert os.path.samefile(a, b)
    assert bertcore.TaskModel.from_pretrained(run / "best" / "model").heads["toy"]


def test_save_total_limit_keeps_the_newest_and_resume_finds_them(tmp_path, tok):
    Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
            args=args(tmp_path, save_total_limit=3)).fit()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-9"]
    assert load_state(run / "last")["state"]["step"] == 10
    os.rename(run / "last", run / "broken")                        # lose last/: the kept ones remain
    trainer = Trainer(toy.model(tok), tokenizer=tok, train=toy.examples(40), eval=toy.examples(16, seed=1),
                      args=args(tmp_path, save_total_limit=3))
    trainer.fit(resume_from=True)
    assert trainer.state.step == 10


def test_a_head_saves_and_loads_alone(tmp_path, tok):
    model = toy.model(tok)
    model.save_head(tmp_path / "head", "toy")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["head.json", "head.safetensors"]
    other = bertcore.TaskModel(model.encoder, {}, tokenizer=tok)
    other.load_head(tmp_path / "head", name="again")
    texts = [e["text"] for e in toy.examples(6)]
    assert other.predict(texts, head="again") == model.predict(texts, head="toy")
    with torch.no_grad():
        assert torch.equal(other.heads["again"].classifier.weight, model.heads["toy"].classifier.weight)
