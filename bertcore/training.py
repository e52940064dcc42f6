"""Trainer and TrainingArgs: fine-tuning (one head or several) and pretraining.

The Trainer knows nothing about tasks: every head brings encode / collate / forward /
loss / split / decode / metrics (see `bertcore.heads.Head`), and one training step is

    features ──head.collate──▶ packed batch ──encoder.forward_packed──▶ BertOutput
        ──head.forward──▶ logits ──head.loss──▶ loss (× weight, summed over the step's heads)

Data order is a pure function of (seed, epoch), so the "data position" in a
checkpoint is just (epoch, batch index) and a resumed run sees exactly the batches
an uninterrupted one would. Under torchrun each rank takes its slice of every
global batch; rank 0 alone writes files.

Output folder:
    last/   trainer_model.safetensors + trainer_state.pt (optimizer, scheduler, RNG,
            position) and the model as `model.save_pretrained` writes it, if it can
    best/   the best model by the main eval metric
    metrics.jsonl, curves.png
"""
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import atomic_save_file
from .data import load_examples

logger = logging.getLogger(__name__)

MODEL_FILE = "trainer_model.safetensors"
STATE_FILE = "trainer_state.pt"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the last good checkpoint is left in place."""


@dataclass
class TrainingArgs:
    """Hyper-parameters and bookkeeping of a training run.

    `batch_size` is per process (the global batch is batch_size × world size ×
    grad_accum_steps). `eval_every`: evaluate (and checkpoint) every N optimizer
    steps; None = at the end of each epoch. `layerwise_lr_decay` d < 1 gives encoder
    layer i the rate lr·d^(L-i) (embeddings lowest, heads the full lr).
    `loss_weights` ({head: w}) and `sampling` ("round_robin" | "proportional") are for
    multi-task training. `bf16` autocasts to bfloat16 where the device supports it.
    """

    output_dir: str
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    freeze_encoder: bool = False
    grad_accum_steps: int = 1
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    layerwise_lr_decay: float = 1.0
    max_length: int = 128
    max_steps: int | None = None
    bf16: bool = False
    eval_batch_size: int | None = None
    loss_weights: dict = field(default_factory=dict)
    sampling: str = "round_robin"
    metric_for_best: str | None = None
    load_best_at_end: bool = False
    save_checkpoints: bool = True
    logging_steps: int = 10
    progress: bool = True
    device: str | None = None

    def __post_init__(self):
        if self.sampling not in ("round_robin", "proportional"):
            raise ValueError(f"sampling={self.sampling!r}; expected 'round_robin' or 'proportional'")
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.layerwise_lr_decay <= 1:
            raise ValueError(f"layerwise_lr_decay={self.layerwise_lr_decay} must be in (0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")


@dataclass
class _Task:
    """One stream of training batches: its heads (several = one batch feeds all, as
    MLM+NSP pretraining does), its features and the example each feature came from."""

    name: str
    heads: tuple
    examples: list
    features: list
    owner: list          # feature index → example index


class _Step(torch.nn.Module):
    """encoder + the step's heads → weighted loss; the module DDP wraps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, heads, weights):
        encoder, all_heads = self.model.encoder, _heads(self.model)
        out = encoder.forward_packed(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"],
                                     batch.get("token_type_ids"))
        loss, logits = 0.0, {}
        for name in heads:
            logits[name] = all_heads[name](out, batch)
            loss = loss + weights.get(name, 1.0) * all_heads[name].loss(logits[name], batch)
        return loss, logits


def init_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1), once; True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _heads(model) -> dict:
    heads = getattr(model, "heads", None)
    if heads is None:
        raise TypeError(f"{type(model).__name__} has no .heads; pass a bertcore.TaskModel")
    return heads


class Trainer:
    """Train a TaskModel's heads (and its encoder, unless frozen).

    >>> trainer = Trainer(model, tokenizer=tok, train=examples, eval=examples,
    ...                   args=TrainingArgs("runs/x"), head="sentiment")
    >>> history = trainer.fit()          # one metrics dict per evaluation
    >>> trainer.evaluate()               # {"accuracy": ..., "macro_f1": ..., "loss": ...}

    `train`/`eval`: a list of example dicts, a data file, or any indexable of dicts;
    for several heads a dict {head: data}. `head` names the head for single-task data
    (optional when the model has one head); a tuple of names trains those heads on the
    same batches (e.g. ("mlm", "nsp") for pretraining on `make_nsp_pairs` output).
    """

    def __init__(self, model, tokenizer=None, train=None, eval=None, args: TrainingArgs | None = None,
                 head=None):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.args = args or TrainingArgs(output_dir="runs/bertcore")
        self.output_dir = Path(self.args.output_dir)
        self.head = head
        self._setup_distributed()
        self.train_tasks = self._tasks(train, head, "train") if train is not None else []
        self.eval_tasks = self._tasks(eval, head, "eval") if eval is not None else []
        self.history: list[dict] = []

    # ---- setup --------------------------------------------------------------------------

    def _setup_distributed(self):
        """Join the torchrun process group if there is one (gloo on CPU, nccl on GPU)."""
        init_distributed()
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if self.args.device:
            self.device = torch.device(self.args.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            self.device = torch.device("cpu")

    def _tasks(self, data, head, split) -> list[_Task]:
        heads = _heads(self.model)
        if isinstance(data, dict) and not {"text", "tokens", "input_ids", "question"} & set(data):
            groups = [(name, (name,), d) for name, d in data.items()]
        else:
            if head is None:
                if len(heads) != 1:
                    raise ValueError(f"the model has heads {list(heads)}; pass head= to say which one "
                                     "this data trains, or train={head: data}")
                head = next(iter(heads))
            names = tuple(head) if isinstance(head, (tuple, list)) else (head,)
            groups = [("+".join(names), names, data)]
        tasks = []
        for name, names, source in groups:
            for h in names:
                if h not in heads:
                    raise KeyError(f"{split} data is for head {h!r}, but the model's heads are {list(heads)}")
            examples = load_examples(source, task=_head_kind(heads[names[0]]))
            features, owner = [], []
            for i in range(len(examples)):
                feats = self._encode([heads[n] for n in names], examples[i])
                features.extend(feats)
                owner.extend([i] * len(feats))
            if split == "train" and not features:
                raise ValueError(f"no training features for {name!r}: the data is empty")
            tasks.append(_Task(name, names, examples, features, owner))
        return tasks

    def _encode(self, heads, example) -> list[dict]:
        """The example's features; with several heads on one batch (MLM + NSP), each head
        encodes it and the features are merged, so every head finds its label keys."""
        if self.tokenizer is None:
            raise ValueError("the Trainer needs tokenizer= (or a model with .tokenizer) to encode examples")
        per_head = [h.encode(example, self.tokenizer, self.args.max_length) for h in heads]
        merged = per_head[0]
        for other in per_head[1:]:
            if len(other) != len(merged):
                raise ValueError("heads trained on one batch must make the same number of features per example")
            merged = [{**b, **a} for a, b in zip(merged, other)]
        return merged

    def _collate(self, task: _Task, features: list[dict]) -> dict:
        """The first head's batch, plus label keys the step's other heads add."""
        heads = _heads(self.model)
        batch = heads[task.heads[0]].collate(features)
        for name in task.heads[1:]:
            for key, value in heads[name].collate(features).items():
                batch.setdefault(key, value)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _optimizer(self):
        """AdamW; no decay on biases and LayerNorm weights; optional layer-wise lr decay."""
        args = self.args
        encoder = self.model.encoder
        layers = encoder.config.num_hidden_layers
        depth = {}
        for name, p in encoder.named_parameters():
            if name.startswith("embeddings."):
                depth[id(p)] = 0
            elif name.startswith("encoder.layer."):
                depth[id(p)] = int(name.split(".")[2]) + 1
        groups: dict[tuple, list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias")
            scale = args.layerwise_lr_decay ** (layers + 1 - depth.get(id(p), layers + 1))
            groups.setdefault((0.0 if no_decay else args.weight_decay, scale), []).append(p)
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen")
        param_groups = [{"params": ps, "weight_decay": wd, "lr": args.learning_rate * scale}
                        for (wd, scale), ps in groups.items()]
        # foreach: one fused op per step instead of a Python loop over tensors (also on CPU).
        return torch.optim.AdamW(param_groups, lr=args.learning_rate, foreach=True)

    # ---- the data plan --------------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """[(task index, this rank's feature indices), ...] for one epoch, a pure function of
        (seed, epoch). Global batches are batch_size × world; rank r takes [r::world]."""
        per_task = []
        global_batch = self.args.batch_size * self.world
        for t, task in enumerate(self.train_tasks):
            g = torch.Generator().manual_seed(self.args.seed * 1000003 + epoch * 101 + t)
            order = torch.randperm(len(task.features), generator=g).tolist()
            batches = [order[i:i + global_batch] for i in range(0, len(order), global_batch)]
            if len(batches) > 1 and len(batches[-1]) < self.world:  # a rank would get nothing
                batches.pop()
            per_task.append([(t, b[self.rank::self.world]) for b in batches])
        if len(per_task) == 1:
            return per_task[0]
        if self.args.sampling == "proportional":  # a shuffled sequence of task draws ∝ batch counts
            g = torch.Generator().manual_seed(self.args.seed * 7919 + epoch)
            slots = [t for t, batches in enumerate(per_task) for _ in batches]
            slots = [slots[i] for i in torch.randperm(len(slots), generator=g).tolist()]
            cursors = [iter(b) for b in per_task]
            return [next(cursors[t]) for t in slots]
        plan, cursors = [], [iter(b) for b in per_task]                       # round robin
        while cursors:
            for it in list(cursors):
                item = next(it, None)
                if item is None:
                    cursors.remove(it)
                else:
                    plan.append(item)
        return plan

    def _total_steps(self) -> int:
        if self.args.max_steps:
            return self.args.max_steps
        micro = len(self._epoch_plan(0))
        return self.args.epochs * math.ceil(micro / self.args.grad_accum_steps)

    # ---- training -------------------------------------------------------------------------

    def fit(self, resume_from=None) -> list[dict]:
        """Train; returns the history, one metrics dict per evaluation.

        `resume_from`: a checkpoint folder (e.g. `<output_dir>/last`), or True for
        `<output_dir>/last`. Model, optimizer, scheduler, RNG states and the data
        position are restored, so the run ends exactly where an uninterrupted one would.
        """
        if not self.train_tasks:
            raise ValueError("fit() needs train= data")
        args = self.args
        self._seed_everything(args.seed)
        if args.freeze_encoder:
            self.model.encoder.freeze()
        self.model.to(self.device)
        optimizer = self._optimizer()
        total = self._total_steps()
        warmup = int(total * args.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (
            (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))))
        step_module = _Step(self.model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            step_module = DDP(step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                              find_unused_parameters=len(self.train_tasks) > 1)

        state = {"epoch": 0, "position": 0, "step": 0, "best": None, "bad_evals": 0, "history": []}
        if resume_from:
            state = self._load_checkpoint(resume_from, optimizer, scheduler)
        self.history = state["history"]
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if not resume_from and (self.output_dir / "metrics.jsonl").exists():
                (self.output_dir / "metrics.jsonl").unlink()

        bar = self._progress(total, state["step"])
        autocast = self._autocast()
        running, running_n, tokens, t0 = 0.0, 0, 0, time.perf_counter()
        stop = state["step"] >= total
        self.model.train()
        for epoch in range(state["epoch"], args.epochs if not args.max_steps else 10**9):
            if stop:
                break
            plan = self._epoch_plan(epoch)
            start = state["position"] if epoch == state["epoch"] else 0
            pending = 0
            for i in range(start, len(plan)):
                t, indices = plan[i]
                task = self.train_tasks[t]
                batch = self._collate(task, [task.features[j] for j in indices])
                pending += 1
                last_micro = pending == args.grad_accum_steps or i == len(plan) - 1
                sync = step_module.no_sync() if self.distributed and not last_micro else nullcontext()
                with sync, autocast:
                    loss, _ = step_module(batch, task.heads, args.loss_weights)
                self._check_finite(loss, state["step"], task.name)
                (loss / args.grad_accum_steps).backward()
                running += float(loss.detach())
                running_n += 1
                tokens += int(batch["input_ids"].numel()) * self.world
                if not last_micro:
                    continue
                if args.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                pending = 0
                state["step"] += 1
                state["epoch"], state["position"] = (epoch, i + 1) if i + 1 < len(plan) else (epoch + 1, 0)
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{running / running_n:.4f}", tok_s=f"{rate:,.0f}")
                if args.logging_steps and state["step"] % args.logging_steps == 0:
                    self._log({"step": state["step"], "epoch": epoch + (i + 1) / len(plan),
                               "loss": running / running_n, "learning_rate": scheduler.get_last_lr()[0],
                               "tokens_per_s": rate})
                at_epoch_end = i == len(plan) - 1
                done = state["step"] >= total
                if (args.eval_every and state["step"] % args.eval_every == 0) or \
                        (not args.eval_every and at_epoch_end) or done:
                    record = {"step": state["step"], "epoch": epoch + (i + 1) / len(plan),
                              "train_loss": running / max(running_n, 1)}
                    running, running_n = 0.0, 0
                    stop = self._evaluate_and_save(record, state, optimizer, scheduler) or done
                    self.model.train()
                if stop:
                    break
        if bar is not None:
            bar.close()
        if args.load_best_at_end and (self.output_dir / "best" / MODEL_FILE).is_file():
            self._load_model_file(self.output_dir / "best" / MODEL_FILE)
        if self.rank == 0:
            self._plot()
        return self.history

    def _evaluate_and_save(self, record, state, optimizer, scheduler) -> bool:
        """Evaluate, log, keep best/last checkpoints; True when early stopping says stop."""
        metrics = self.evaluate() if self.eval_tasks else {}
        record.update(metrics)
        self.history.append(record)
        state["history"] = self.history
        self._log({**record, "split": "eval"})
        key = self.args.metric_for_best or self._default_metric()
        improved = False
        if key in metrics:
            value = metrics[key]
            greater = self._greater_is_better(key)
            improved = state["best"] is None or (value > state["best"] if greater else value < state["best"])
            if improved:
                state["best"], state["bad_evals"] = value, 0
            else:
                state["bad_evals"] += 1
        if self.args.save_checkpoints and self.rank == 0:
            if improved:
                self._save_dir(self.output_dir / "best", None)
            self._save_dir(self.output_dir / "last", (state, optimizer, scheduler))
        if self.distributed:
            dist.barrier()
        patience = self.args.early_stopping_patience
        if patience is not None and state["bad_evals"] >= patience:
            logger.info("early stopping: %s did not improve for %d evaluations", key, patience)
            return True
        return False

    def _default_metric(self) -> str:
        """The first eval head's main metric ("<head>/<metric>" when several are evaluated)."""
        if not self.eval_tasks:
            return "loss"
        name = self.eval_tasks[0].heads[0]
        metric = getattr(_heads(self.model)[name], "main_metric", "loss")
        return f"{name}/{metric}" if sum(len(t.heads) for t in self.eval_tasks) > 1 else metric

    def _greater_is_better(self, key: str) -> bool:
        name, _, metric = key.rpartition("/")
        heads = _heads(self.model)
        head = heads[name] if name in heads else (heads[self.eval_tasks[0].heads[0]] if self.eval_tasks else None)
        if metric == "loss" or head is None:
            return False
        return bool(getattr(head, "greater_is_better", True)) if metric == head.main_metric else True

    def _check_finite(self, loss, step, task_name):
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
        if self.distributed:  # every rank stops together
            dist.all_reduce(bad)
        if bad.item():
            where = self.output_dir / "last"
            kept = f"the last good checkpoint is {where}" if (where / STATE_FILE).exists() else \
                "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"training loss became {float(loss.detach())} at step {step + 1} (task {task_name!r}); stopped, and "
                f"{kept}. Lower learning_rate, check the data's labels, or turn off bf16.")

    # ---- evaluation and prediction ----------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, eval=None) -> dict:
        """Metrics of each eval head plus its mean `loss`. With several heads the keys are
        "<head>/<metric>" (a task of heads sharing batches reports each head)."""
        tasks = self._tasks(eval, self.head, "eval") if eval is not None else self.eval_tasks
        if not tasks:
            raise ValueError("evaluate() needs eval= data (in the Trainer or as an argument)")
        heads = _heads(self.model)
        several = sum(len(t.heads) for t in tasks) > 1
        results = {}
        for task in tasks:
            for name, (predictions, loss) in self._run(task).items():
                metrics = dict(heads[name].metrics(predictions, task.examples)) if predictions is not None else {}
                metrics["loss"] = loss
                results.update({(f"{name}/" if several else "") + k: float(v) for k, v in metrics.items()})
        return results

    @torch.no_grad()
    def predict(self, examples=None, head=None) -> list:
        """Decoded predictions (labels, entities, answers...) for `examples` or the eval set."""
        if examples is None:
            if not self.eval_tasks:
                raise ValueError("predict() needs examples or eval= data")
            task = self.eval_tasks[0]
        else:
            heads = _heads(self.model)
            name = head or self.head or (next(iter(heads)) if len(heads) == 1 else None)
            if name is None:
                raise ValueError(f"the model has heads {list(heads)}; pass head=")
            names = tuple(name) if isinstance(name, (tuple, list)) else (name,)
            items = [heads[names[0]].example_from_input(x) for x in examples]
            task = self._tasks(items, names, "predict")[0]
        return self._run(task, with_loss=False)[task.heads[0]][0]

    def _run(self, task: _Task, with_loss: bool = True) -> dict:
        """Forward the task's features in order: {head: (decoded predictions or None, mean loss)}."""
        self.model.to(self.device).eval()
        heads = _heads(self.model)
        size = self.args.eval_batch_size or self.args.batch_size * 2
        outputs = {n: [] for n in task.heads}
        losses = {n: [0.0, 0] for n in task.heads}
        with self._autocast():
            for s in range(0, len(task.features), size):
                feats = task.features[s:s + size]
                batch = self._collate(task, feats)
                out = self.model.encoder.forward_packed(batch["input_ids"], batch["cu_seqlens"],
                                                        batch["max_seqlen"], batch.get("token_type_ids"))
                for name in task.heads:
                    head = heads[name]
                    logits = head(out, batch)
                    if with_loss and getattr(head, "has_labels", lambda b: True)(batch):
                        losses[name][0] += float(head.loss(logits, batch)) * len(feats)
                        losses[name][1] += len(feats)
                    outputs[name].extend(head.split(logits, batch))
        results = {}
        for name in task.heads:
            grouped = [([], []) for _ in task.examples]
            for j, out in enumerate(outputs[name]):
                grouped[task.owner[j]][0].append(task.features[j])
                grouped[task.owner[j]][1].append(out)
            try:
                predictions = [heads[name].decode(ex, fs, outs) for ex, (fs, outs) in zip(task.examples, grouped)]
            except NotImplementedError:
                predictions = None
            total, count = losses[name]
            results[name] = (predictions, total / count if count else float("nan"))
        return results

    # ---- checkpoints ------------------------------------------------------------------------

    def _save_dir(self, directory: Path, full_state) -> None:
        """Write a checkpoint folder next to its final place, then swap it in with renames,
        so a crash leaves either the old folder or the new one, never half of one."""
        tmp = directory.with_name(f".{directory.name}.tmp")
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Clones: tied weights (MLM decoder = word embeddings) share storage, which safetensors refuses.
        atomic_save_file({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                         tmp / MODEL_FILE)
        if hasattr(self.model, "save_pretrained"):
            try:
                self.model.save_pretrained(tmp / "model")
            except Exception as err:  # a user-facing copy; the trainer's own file is what resume needs
                logger.warning("model.save_pretrained failed (%s); %s still has the weights", err, MODEL_FILE)
        if full_state is not None:
            state, optimizer, scheduler = full_state
            payload = {
                "state": {k: v for k, v in state.items() if k != "history"},
                "history": self.history,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "args": asdict(self.args),
            }
            torch.save(payload, tmp / (STATE_FILE + ".tmp"))
            os.replace(tmp / (STATE_FILE + ".tmp"), tmp / STATE_FILE)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, resume_from, optimizer, scheduler) -> dict:
        directory = self.output_dir / "last" if resume_from is True else Path(resume_from)
        if not (directory / STATE_FILE).is_file():
            old = directory.with_name(f".{directory.name}.old")  # a crash between the two renames
            if (old / STATE_FILE).is_file():
                directory = old
            else:
                raise FileNotFoundError(f"no {STATE_FILE} in {directory}; resume_from= takes a checkpoint "
                                        f"folder such as {self.output_dir / 'last'}")
        self._load_model_file(directory / MODEL_FILE)
        payload = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        _set_rng_state(payload["rng"])
        state = dict(payload["state"])
        state["history"] = payload["history"]
        logger.info("resumed from %s at step %d", directory, state["step"])
        return state

    def _load_model_file(self, file: Path) -> None:
        from safetensors.torch import load_file
        state = load_file(str(file))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{file} does not match this model: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}; resume with the same model and heads")

    # ---- logging ------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _plot(self) -> None:
        """curves.png: training loss and eval metrics against the step (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.info("matplotlib is not installed; no curves.png")
            return
        file = self.output_dir / "metrics.jsonl"
        if not file.exists():
            return
        records = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line]
        train = [r for r in records if "loss" in r and r.get("split") != "eval"]
        evals = [r for r in records if r.get("split") == "eval"]
        keys = sorted({k for r in evals for k in r} - {"step", "epoch", "split", "train_loss"})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        if train:
            axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        if evals:
            axes[0].plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o", label="train loss (eval interval)")
        for key in keys:
            xs = [r["step"] for r in evals if key in r]
            (axes[0] if key.endswith("loss") else axes[1]).plot(xs, [r[key] for r in evals if key in r],
                                                                  marker=".", label=f"eval {key}")
        for ax, title in zip(axes, ("loss", "eval metrics")):
            ax.set_xlabel("optimizer step")
            ax.set_title(title)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = self.output_dir / ".curves.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.output_dir / "curves.png")

    def _progress(self, total, initial):
        if not self.args.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=f"train {'+'.join(t.name for t in self.train_tasks)}",
                    unit="step", dynamic_ncols=True)

    def _autocast(self):
        if not self.args.bf16:
            return nullcontext()
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            logger.warning("bf16=True but this GPU has no bfloat16; training in float32")
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def _head_kind(head) -> str | None:
    return getattr(head, "name", None) or None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
