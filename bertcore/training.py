"""Trainer and TrainingArgs: fine-tuning (one head or several) and pretraining.

The Trainer orchestrates; the work is elsewhere, one job per module:

    TaskModel      encode → collate → forward → compute_loss / run (the one run path)
    dataplan       which micro-batch comes when (pure functions of seed and epoch)
    trainstate     where the run is (TrainState) and the RNG states
    runfolder      the output folder's lock and its verified, crash-safe checkpoints
    reporting      progress bar, metrics.jsonl, curves.png

Under torchrun each rank takes its slice of every global batch; DDP wraps the
TaskModel; rank 0 alone writes files, and its checkpoints hold every rank's RNG states.
"""
import atexit
import datetime
import logging
import math
import numbers
import os
import re
import time
import warnings
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import cudagraphs
from .checkpoint import resolve_device
from .data import DataError, load_examples, where
from .dataplan import epoch_plan, linear_schedule, total_steps
from .reporting import Reporter
from .runfolder import (CHECKPOINT_FOLDERS, RunLock, check_new_run, checkpoint_step, find_checkpoint,
                        link_checkpoint, load_model_weights, resume, save_checkpoint)
from .taskmodel import Encoded, TaskModel, check_text_room, to_device
from .trainstate import TrainState, rng_state, set_seed

logger = logging.getLogger(__name__)

# Settings that fix what a saved run state means (its data position, schedule and best
# score): resuming with others is refused.
RESUME_KEYS = ("batch_size", "grad_accum_steps", "learning_rate", "seed", "epochs", "max_steps",
               "warmup_ratio", "weight_decay", "layerwise_lr_decay", "max_length", "sampling", "freeze_encoder",
               "metric_for_best", "loss_weights", "max_grad_norm")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or inf; the last finite checkpoint is left in place."""


@dataclass
class TrainingArgs:
    """Hyper-parameters and bookkeeping of a training run.

    `batch_size` is per process (the global batch is batch_size × world size ×
    grad_accum_steps, and a step's gradient is that batch's: `step_loss_weights`).
    `eval_every`: evaluate (and checkpoint) every N optimizer steps; None = at the end
    of each epoch. `layerwise_lr_decay` d < 1 gives encoder
    layer i the rate lr·d^(L-i) (embeddings lowest, heads the full lr).
    `loss_weights` ({head: w}) and `sampling` ("round_robin" | "proportional") are for
    multi-task training. `bf16` autocasts to bfloat16 where the device supports it.
    `max_grad_norm` clips the gradient's global norm (0 or None: no clipping).
    `save_total_limit`: how many resumable checkpoints to keep (last/ and, beyond one,
    checkpoint-<step>/ folders of hard links); best/ is always kept.
    The learning rate warms up linearly from 0 over `warmup_ratio` of the steps, then
    decays linearly to 0, as transformers' default schedule.
    `cuda_graphs`: on a GPU, run each training step as a CUDA graph captured once per
    batch bucket (`bertcore.buckets`, `bertcore.cudagraphs`). None (the default) = on
    where it applies: CUDA, one process, `grad_accum_steps` 1, labels that pad with
    IGNORE_INDEX (classification, NER, QA, NSP; not regression, multi-label, MLM or
    embedding pairs, whose batches run eagerly). False = always eager.
    `overwrite_output_dir`: a new run (not resuming) that saves checkpoints into a folder
    holding an earlier run's is refused unless this is set; then they are removed first
    (as transformers' argument of that name). Folders bertcore did not write are never
    removed.
    """

    output_dir: str
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
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
    save_total_limit: int = 1
    logging_steps: int = 10
    progress: bool = True
    device: str | None = None
    cuda_graphs: bool | None = None
    overwrite_output_dir: bool = False

    def __post_init__(self):
        if self.sampling not in ("round_robin", "proportional"):
            raise ValueError(f"sampling={self.sampling!r}; expected 'round_robin' or 'proportional'")
        # from a config file: "false" is truthy (it froze the encoder), 2.5 epochs ran 3, "8" failed deep in
        for name in ("freeze_encoder", "bf16", "load_best_at_end", "save_checkpoints", "progress",
                     "overwrite_output_dir", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool) and not (name == "cuda_graphs" and self.cuda_graphs is None):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected True or False")
        for name in ("epochs", "batch_size", "grad_accum_steps", "save_total_limit", "logging_steps",
                     "max_steps", "eval_every", "eval_batch_size", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"{name}={value!r} must be a whole number")
        for name in ("epochs", "batch_size", "grad_accum_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("max_steps", "eval_every", "eval_batch_size", "early_stopping_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or None)")
        if not 0 < self.layerwise_lr_decay <= 1:
            raise ValueError(f"layerwise_lr_decay={self.layerwise_lr_decay} must be in (0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not 0 <= self.learning_rate < math.inf:
            raise ValueError(f"learning_rate={self.learning_rate} must be a finite number >= 0")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay={self.weight_decay} must be a finite number >= 0")
        # a negative norm made clip_grad_norm_ scale every gradient by a negative number: gradient ascent
        if self.max_grad_norm is not None and not 0 <= self.max_grad_norm < math.inf:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be a finite number >= 0 (0 or None: no "
                             "clipping)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed!r} must be a whole number in [0, 2**32) (numpy's seed range)")
        if self.logging_steps < 0:
            raise ValueError(f"logging_steps={self.logging_steps} must be >= 0 (0: no training-loss lines)")
        if not isinstance(self.loss_weights, dict):
            raise ValueError(f"loss_weights={self.loss_weights!r} must be a dict {{head: weight}}")
        for head, weight in self.loss_weights.items():   # a negative weight trains that head to be wrong
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:
                raise ValueError(f"loss_weights[{head!r}]={weight!r} must be a finite number >= 0")
        check_text_room(self.max_length)
        if self.load_best_at_end and not self.save_checkpoints:   # best/ is where the best weights are kept
            raise ValueError("load_best_at_end=True needs save_checkpoints=True: the best model is kept in best/")


# Whether this process's last fit() finished: only then do its ranks wait for each other at
# exit. A rank that failed (its input, a crash) must not wait: its peers learn of it when it goes.
_ranks_meet_at_exit = [False]


@contextmanager
def _leave_together_once_done(trainer: "Trainer"):
    """A fit that finishes has its ranks wait for each other at exit (`_destroy_process_group`);
    one that raises does not."""
    _ranks_meet_at_exit[0] = False
    yield
    _ranks_meet_at_exit[0] = trainer.distributed


def _destroy_process_group() -> None:
    if not dist.is_initialized():   # a script may have destroyed it itself
        return
    if _ranks_meet_at_exit[0] and dist.get_backend() == "gloo":
        # the ranks leave together: one tearing gloo down while another still worked (wrote its
        # files after fit) aborted now and then ("terminate called without an active exception");
        # a rank that died since ends the wait at once, a hung one after the timeout
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=300))
        except Exception as err:   # noqa: BLE001 - at exit, whatever the peers did: tear down
            logger.debug("ranks did not meet at exit: %s", err)
    dist.destroy_process_group()


def init_distributed(device: str | None = None) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1), once; True if distributed.
    `device` (`TrainingArgs.device`) picks the backend: nccl for CUDA, gloo for the CPU
    (nccl reduces no CPU tensor: `device="cpu"` on a GPU machine failed at the first step)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if _device(device).type == "cuda" else "gloo")
        # torn down before the interpreter is: gloo's threads left running at exit abort a rank now
        # and then ("terminate called without an active exception", SIGABRT after a finished run)
        atexit.register(_destroy_process_group)
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_trainer_inputs(model, tokenizer, args: TrainingArgs | None) -> None:
    if not isinstance(model, TaskModel):
        raise TypeError(f"the Trainer trains a bertcore.TaskModel, got a {type(model).__name__}")
    if isinstance(tokenizer, TrainingArgs):   # Trainer(model, args): transformers' order
        raise TypeError("the Trainer's second argument is the tokenizer; pass the TrainingArgs as args=")
    if args is not None:   # a weight for a name that is no head was ignored
        _check_head_names(model, "loss_weights", args.loss_weights)


def _check_head_names(model: TaskModel, what: str, names) -> None:
    """Refuse names in `what` (a dict keyed by head) that are no head of `model`."""
    heads = list(model.heads)
    unknown = [n for n in names if n not in heads]
    if unknown:
        which = "which is" if len(unknown) == 1 else "which are"
        raise ValueError(f"{what} names {', '.join(map(repr, unknown))}, {which} no head of this model (its "
                         f"heads: {', '.join(heads)}); a dict here is keyed by head")


def _check_some_loss(train_sets: list[Encoded], loss_weights: dict) -> None:
    """Refuse loss_weights that weigh every trained head by 0: such a run only decays weights."""
    trained = list(dict.fromkeys(name for data in train_sets for name in data.heads))
    if trained and all(loss_weights.get(name, 1.0) == 0 for name in trained):
        raise ValueError(f"loss_weights gives every trained head ({', '.join(trained)}) weight 0, so nothing would "
                         "learn; raise one above 0, or leave it out (1.0)")


def _sources(model: TaskModel, data, split: str, head) -> list[tuple[tuple[str, ...], object]]:
    """[(head names, data source)]: one per key of a {head: source} dict (a tuple of heads
    trains them on the same batches, as `head` does for one source), else `data` for
    `head` (or the model's only head). A dict keyed by a name that is no head, or an empty
    one, is refused naming it: it was read as one source ("pass head=NAME")."""
    if not isinstance(data, dict):
        return [(model.head_names(head), data)]
    if not data:
        raise ValueError(f"{split}= is an empty dict; give {{head: data}} for heads of {', '.join(model.heads)}, "
                         "or one source of examples")
    keys = [key if isinstance(key, tuple) else (key,) for key in data]
    if not all(keys):
        raise ValueError(f"{split}= has an empty tuple as a key; name the heads its data trains, e.g. ('mlm', 'nsp')")
    _check_head_names(model, f"{split}=", [name for names in keys for name in names])
    return list(zip(keys, data.values()))


class Trainer:
    """Train a TaskModel's heads (and its encoder, unless frozen).

    >>> trainer = Trainer(model, tokenizer=tok, train=examples, eval=examples,
    ...                   args=TrainingArgs("runs/x"), head="sentiment")
    >>> history = trainer.fit()          # one metrics dict per evaluation
    >>> trainer.evaluate()               # {"accuracy": ..., "macro_f1": ..., "loss": ...}

    `train`/`eval`: a list of example dicts, a data file, or any indexable of dicts; for
    several heads a dict {head: data}. `head` names the head for single-task data (optional
    with one head); a tuple of names, or a tuple key in the dict, trains those heads on the
    same batches (("mlm", "nsp") on `make_nsp_pairs` output)."""

    def __init__(self, model: TaskModel, tokenizer=None, train=None, eval=None,
                 args: TrainingArgs | None = None, head=None):
        _check_trainer_inputs(model, tokenizer, args)
        self.model, self.head = model, head
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.args = args or TrainingArgs(output_dir="runs/bertcore")
        self.output_dir = Path(self.args.output_dir)
        self.device = _device(self.args.device)
        self.distributed = init_distributed(self.args.device)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        self.train_sets = self._datasets(train, "train") if train is not None else []
        _check_some_loss(self.train_sets, self.args.loss_weights)
        self.eval_sets = self._datasets(eval, "eval") if eval is not None else []
        self.history: list[dict] = []
        self.state = TrainState()      # where the last fit() got to (best_step: what best/ holds)
        self.graph_stats: dict | None = None   # the last fit()'s graphs: count, memory_mb, failed (None: eager)
        self._graph_step_now = None

    def _datasets(self, data, split: str) -> list[Encoded]:
        """Load, check and encode `data` (one source, or {head: source}) for its heads."""
        groups = _sources(self.model, data, split, self.head)
        sets = []
        for names, source in groups:
            examples = load_examples(source)
            try:
                for name in names:
                    check_examples(self.model.heads[name], examples)
                self.model.prepare(names, self.tokenizer, examples if split == "train" else None)
                encoded = _encode(self.model, examples, names, self.tokenizer, self.args.max_length)
            except DataError as err:   # with several sources: which head's data "example 3" or a file is
                key = names[0] if len(names) == 1 else names
                raise DataError(f"{split}[{key!r}] {err}" if len(groups) > 1 else str(err)) from None
            if split == "train" and not encoded.features:   # a plugin's encode() may make none of real data
                raise DataError(f"no training features for {'+'.join(names)}: " + (
                    f"encode() made none of {len(examples)} examples" if len(examples) else "the data is empty"))
            sets.append(encoded)
        return sets

    # ---- training -------------------------------------------------------------------------

    def fit(self, resume_from=None) -> list[dict]:
        """Train; returns the history, one metrics dict per evaluation.

        `resume_from`: a checkpoint folder (e.g. `<output_dir>/last`), or True for
        `<output_dir>/last`. Model, optimizer, scheduler, RNG states and the data
        position are restored, so the run ends exactly where an uninterrupted one would.
        The output folder is locked while the run lasts. A new run into a folder holding
        an earlier one is refused (see `TrainingArgs.overwrite_output_dir`).
        """
        if not self.train_sets:
            raise ValueError("fit() needs train= data")
        with RunLock(self.output_dir) if self.rank == 0 else nullcontext(), _leave_together_once_done(self):
            _check_run(self, resume_from)
            return self._fit(resume_from)

    def _fit(self, resume_from) -> list[dict]:
        args, model = self.args, self.model
        set_seed(args.seed)
        if args.freeze_encoder:
            model.encoder.freeze()
        model.to(self.device)
        optimizer = make_optimizer(self.model, args)
        total = self._total = total_steps(len(self._plan(0)), epochs=args.epochs,
                                          grad_accum_steps=args.grad_accum_steps, max_steps=args.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(total * args.warmup_ratio), total))
        self._identity = run_identity(args, self.world, self.train_sets, model)   # computed once per fit
        state = _resume(self, optimizer, scheduler, resume_from) if resume_from else TrainState()
        self.state, self.history = state, state.history
        reporter = Reporter(self.output_dir, self.rank == 0, args.progress, state.step if resume_from else None)
        reporter.start(total, state.step, f"train {', '.join('+'.join(d.heads) for d in self.train_sets)}")
        try:
            self._loop(state, total, optimizer, scheduler, reporter)
        finally:
            reporter.close()
            step, self._graph_step_now = self._graph_step_now, None   # its gradient buffers go with it
            if step is not None:
                self.graph_stats = step.report()
        if args.load_best_at_end and args.save_checkpoints and state.best_step is not None:  # best/ is this run's
            load_model_weights(model, find_checkpoint(self.output_dir / "best", resumable=False))
        return self.history

    def _plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        return epoch_plan([len(d.features) for d in self.train_sets], seed=self.args.seed, epoch=epoch,
                          batch_size=self.args.batch_size, world=self.world, rank=self.rank,
                          sampling=self.args.sampling)

    def _loop(self, state: TrainState, total: int, optimizer, scheduler, reporter: Reporter) -> None:
        args, model = self.args, self.model
        step_model = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            step_model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=True)   # NER, QA, mean pooling: the pooler gets no gradient
        graph_step = self._graph_step_now = cudagraphs.train_step_for(model, optimizer, args, self.device,
                                                                          self.distributed)
        buckets = model.buckets(args.batch_size) if graph_step else None
        model.train()
        running, running_n, tokens, t0 = 0.0, 0, 0, time.perf_counter()
        pending_loss = 0.0
        epoch = state.epoch
        while not state.finished and state.step < total and (args.max_steps or epoch < args.epochs):
            plan = self._plan(epoch)
            ready = {}   # i: (batch, its heads' loss weights), collated before its turn
            for i in range(state.position if epoch == state.epoch else 0, len(plan)):
                data = self.train_sets[plan[i][0]]
                if i not in ready:   # a step starts: all of its micro-batches, for their label counts
                    ready = _step_batches(self, plan, i, buckets)
                batch, weights = ready.pop(i)
                if "num_sequences" in batch:  # bucketed: the whole step is one graph replay
                    result = graph_step(batch, data.heads)
                    # Not before a checkpoint: the RNG state it saves must precede the next collate.
                    if i + 1 < len(plan) and state.step + 1 < total and not _evaluates(args, state.step + 1, i, len(plan)):
                        ready = _step_batches(self, plan, i + 1, buckets)
                    loss, bad, norm = result.tolist()   # the step's one host read
                    if bad:
                        raise _non_finite(loss, norm, state.step, data.heads, self.output_dir)
                    scheduler.step()
                    pending_loss += loss
                    tokens += batch["num_tokens"] * self.world
                else:
                    sync = step_model.no_sync() if self.distributed and ready else nullcontext()
                    with sync, autocast(self.device, self.args.bf16):
                        loss = model.compute_loss(step_model(batch, head=list(data.heads)), batch, weights)
                    loss.backward()
                    pending_loss += float(loss.detach()) / self.world   # this rank's share of the step's loss
                    tokens += int(batch["input_ids"].numel()) * self.world
                    if ready:
                        continue
                    pending_loss, bad_norm = _clip_and_step(model, optimizer, scheduler, args.max_grad_norm,
                                                            self.distributed, pending_loss)
                    if bad_norm is not None:
                        raise _non_finite(pending_loss, bad_norm, state.step, data.heads, self.output_dir)
                running, running_n, pending_loss = running + pending_loss, running_n + 1, 0.0
                state.step += 1
                state.epoch, state.position = (epoch, i + 1) if i + 1 < len(plan) else (epoch + 1, 0)
                record = {"step": state.step, "epoch": epoch + (i + 1) / len(plan), "loss": running / running_n,
                          "learning_rate": _learning_rate(scheduler),
                          "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
                reporter.step(record, log=bool(args.logging_steps) and state.step % args.logging_steps == 0)
                done = state.step >= total
                if _evaluates(args, state.step, i, len(plan)) or done:
                    record = {"step": state.step, "epoch": record["epoch"], "train_loss": running / running_n}
                    running, running_n = 0.0, 0
                    stop = self._evaluate_and_save(record, state, optimizer, scheduler, reporter)
                    tokens, t0 = 0, time.perf_counter()   # tokens_per_s: a rate of training, not of evaluation
                    if stop or done:
                        return
            epoch += 1

    def _evaluate_and_save(self, record: dict, state: TrainState, optimizer, scheduler, reporter) -> bool:
        """Evaluate, log, keep best/last checkpoints; True when early stopping says stop."""
        metrics = self.evaluate() if self.eval_sets else {}
        bad = [k for k, v in metrics.items() if not math.isfinite(v) and k.endswith("loss")]
        if bad:
            raise NonFiniteLossError(f"the eval {bad[0]} is {metrics[bad[0]]} at step {state.step}; nothing was "
                                     f"saved for this step; {_last_good(self.output_dir)}. Lower learning_rate or turn off bf16.")
        record.update(metrics)
        state.history.append(record)
        reporter.evaluation(record)
        key, greater = best_metric(self.model, self.eval_sets, self.args.metric_for_best)
        improved = False
        if key in metrics and math.isfinite(metrics[key]):
            value = metrics[key]
            improved = state.best is None or (value > state.best if greater else value < state.best)
            if improved:
                state.best, state.best_step, state.bad_evals = value, state.step, 0
            else:
                state.bad_evals += 1
        elif self.eval_sets:
            logger.warning("the eval metrics (%s) have no %r, %s; no best checkpoint is kept (set metric_for_best)",
                           ", ".join(k for k in metrics if k not in ("step", "epoch", "train_loss")), key,
                           "which metric_for_best names" if self.args.metric_for_best else
                           "the head's main_metric, which its metrics() must report")
        stop = (patience := self.args.early_stopping_patience) is not None and state.bad_evals >= patience
        # every rank's RNG states (a collective: each rank draws its own dropout and masks); rank 0 writes
        if self.args.save_checkpoints and (rngs := _rank_rng_states(self)) is not None:
            self._save(state, optimizer, scheduler, improved, final=stop or state.step >= self._total, rngs=rngs)
        if self.distributed:
            dist.barrier()
        if stop:
            logger.warning("early stopping: %s did not improve for %d evaluations (best %s at step %s)",
                           key, patience, state.best, state.best_step)
        self.model.train()
        return stop

    def _save(self, state: TrainState, optimizer, scheduler, improved: bool, final: bool, rngs: list) -> None:
        """last/ (resumable: optimizer state unless the run is over) and, when improved, best/
        as hard links to last/'s model; a frozen encoder loaded from a folder is pointed at."""
        frozen = not any(p.requires_grad for p in self.model.encoder.parameters())
        payload = {"state": state.to_dict(), "rng": rngs[0], "rank_rng": rngs[1:], "complete": final,
                   "run": self._identity}
        if not final:
            payload.update(optimizer=cudagraphs.portable(optimizer.state_dict()),
                           scheduler=cudagraphs.portable(scheduler.state_dict()))
        save_checkpoint(self.output_dir / "last", self.model, payload, keep=self.args.save_total_limit,
                        save_encoder=not (frozen and getattr(self.model.encoder, "source", None)))
        if improved:
            link_checkpoint(self.output_dir / "last", self.output_dir / "best")

    # ---- evaluation and prediction ----------------------------------------------------------

    def evaluate(self, eval=None) -> dict:
        """Metrics of each eval head plus its `loss` (the mean per unit, see
        `TaskModel.evaluate`). For a model of several heads the keys are "<head>/<metric>"."""
        sets = self._datasets(eval, "eval") if eval is not None else self.eval_sets
        if not sets:
            raise ValueError("evaluate() needs eval= data (in the Trainer or as an argument)")
        several = len(self.model.heads) > 1   # a run of several heads names each, even one evaluated alone
        self.model.to(self.device)
        results = {}
        for data in sets:
            with autocast(self.device, self.args.bf16):
                run = self.model.run(data, _eval_batch_size(self.args))
            for name, result in run.items():
                head = self.model.heads[name]
                metrics = dict(head.metrics(result.predictions, data.examples)) if result.predictions is not None else {}
                if result.units:   # none: nothing labelled to score (no token masked), not a diverged loss
                    metrics["loss"] = result.loss
                results.update({(f"{name}/" if several else "") + k: float(v) for k, v in metrics.items()})
        return results

    def predict(self, examples=None, head=None) -> list:
        """Decoded predictions for `examples`, or for the eval set of `head` (else the first one)."""
        if examples is None:   # `head`'s eval set: the first one was taken whatever head said
            name = self.model.head_names(head)[0] if head else None
            data = next((d for d in self.eval_sets if name in (None, *d.heads)), None)
            if data is None:
                raise ValueError(f"predict() needs examples, or eval= data for {repr(name) if name else 'a head'}")
        else:
            names = self.model.head_names(head or self.head)
            name, items = names[0], [self.model.heads[names[0]].example_from_input(x) for x in examples]
            self.model.prepare(names, self.tokenizer)
            data = self.model.encode(items, names, self.tokenizer, self.args.max_length)
        self.model.to(self.device)
        with autocast(self.device, self.args.bf16):
            run = self.model.run(data, _eval_batch_size(self.args), with_loss=False)
        return run[name or data.heads[0]].predictions


def _evaluates(args: TrainingArgs, step: int, i: int, plan_length: int) -> bool:
    """Whether optimizer step `step`, ending at micro-batch i of the epoch's plan, is
    followed by an evaluation and a checkpoint by the cadence (the run's last step
    always is; the loop checks that apart)."""
    return bool(args.eval_every and step % args.eval_every == 0) or (not args.eval_every and i == plan_length - 1)


def _eval_batch_size(args: TrainingArgs) -> int:
    return args.eval_batch_size or args.batch_size * 2


def _step_batches(trainer: Trainer, plan: list, i: int, buckets) -> dict:
    """{j: (batch on the device, its heads' loss weights)} for the optimizer step that
    starts at plan[i]: its grad_accum_steps micro-batches (one, bucketed, for a graph
    step), weighted by `step_loss_weights`."""
    stop = i + 1 if buckets else min(i + trainer.args.grad_accum_steps, len(plan))
    steps = [(trainer.train_sets[t], indices) for t, indices in plan[i:stop]]
    batches = [trainer.model.collate([data.features[j] for j in indices], data.heads, buckets)
               for data, indices in steps]
    # every batch: one that the buckets leave out (MLM, regression) runs eager, with the weights
    weights = step_loss_weights(trainer.model, batches, [data.heads for data, _ in steps], trainer.args.loss_weights,
                                trainer.distributed, trainer.device)
    return {i + k: (to_device(b, trainer.device), w) for k, (b, w) in enumerate(zip(batches, weights))}


def step_loss_weights(model: TaskModel, batches: list[dict], heads: list[tuple], loss_weights: dict,
                      distributed: bool, device: torch.device) -> list[dict]:
    """{head: weight} for each micro-batch of one optimizer step (`heads`: each batch's).

    A head's loss is a mean over its units (`Head.loss_count`: labelled tokens for MLM and
    NER, sequences otherwise). Each micro-batch's mean weighs by its share of the head's
    units in the step, counted over every micro-batch and (under DDP) every rank, so the
    step's gradient for a head is that of one batch holding all of them: a micro-batch of
    short sentences no longer weighs as much as one of long ones (transformers'
    `num_items_in_batch` fix), nor a short last step less. A head then weighs by the
    share of the step's micro-batches that carry it, as when each micro-batch was its own
    step: with several tasks, a task's examples weigh the same whichever task shares
    their step. The world size undoes DDP's averaging of the ranks' gradients. One
    micro-batch in one process gets the user's `loss_weights` exactly. Counted on the
    host; under DDP one all_reduce, whose result stays on the device (no sync)."""
    names = sorted(model.heads)   # the same order on every rank
    counts = torch.tensor([[model.heads[n].loss_count(b) if n in hs and model.heads[n].has_labels(b) else -1
                            for n in names] for b, hs in zip(batches, heads)], dtype=torch.float64)  # (micro, heads)
    carried = (counts >= 0).to(torch.float64)                # (micro, heads): the batch holds the head's labels
    counts = counts.clamp(min=0)
    totals = torch.cat([counts.sum(0), carried.sum(0), torch.tensor([float(len(batches))])])  # (2·heads + 1,)
    world = 1
    if distributed:
        world = dist.get_world_size()
        totals = totals.to(device)   # nccl reduces no CPU tensor
        dist.all_reduce(totals)
    else:
        totals = totals.tolist()
    units, micro = totals[:len(names)], totals[-1]
    share = [totals[len(names) + k] / micro for k in range(len(names))]   # of the step's micro-batches
    return [{n: loss_weights.get(n, 1.0) * ((float(c) * world / units[k]) * share[k] if float(c) else 0.0)
             for k, (n, c) in enumerate(zip(names, row)) if n in hs} for row, hs in zip(counts, heads)]


def _clip_and_step(model, optimizer, scheduler, max_grad_norm, distributed: bool,
                   loss: float) -> tuple[float, float | None]:
    """Clip, check that loss and gradients are finite (all ranks agree), then step; returns
    the step's loss (`loss`: this rank's share of it, `step_loss_weights`) summed over the
    ranks, as one process on the global batch logs it, and, for a non-finite step, which is
    not taken, its gradient norm (None: stepped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
    good = math.isfinite(loss) and bool(torch.isfinite(norm))
    # Under DDP on the gradients' device: nccl reduces no CPU tensor. One collective for both
    # the flag and the loss that rank 0 logs (else its own slice's alone, not the global batch's).
    sums = torch.tensor([0.0 if good else 1.0, loss], dtype=torch.float64,
                        device=norm.device if distributed else "cpu")   # one process: no copy to the GPU and back
    if distributed:
        dist.all_reduce(sums)
    bad, loss = sums.tolist()
    if bad:
        return loss, float(norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, None


def _rank_rng_states(trainer: "Trainer") -> list[dict] | None:
    """Every rank's RNG states, gathered on rank 0 (None on the others; [rank 0's] in one
    process): the ranks' dropout and masking draw different amounts, so each rank resumes
    from its own."""
    if not trainer.distributed:
        return [rng_state()]
    if trainer.device.type == "cuda":   # object collectives on nccl go through the current device
        torch.cuda.set_device(trainer.device)
    states = [None] * trainer.world if trainer.rank == 0 else None
    dist.gather_object(rng_state(), states, dst=0)
    return states


def _non_finite(loss: float, norm: float, step: int, heads, output_dir: Path) -> "NonFiniteLossError":
    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {norm}"
    return NonFiniteLossError(f"{what} at step {step + 1} ({'+'.join(heads)}); stopped before the optimizer "
                              f"step, so the weights are unharmed; {_last_good(output_dir)}. Lower "
                              "learning_rate, check the data's labels, or turn off bf16.")


def _last_good(output_dir: Path) -> str:
    try:
        folder = find_checkpoint(output_dir / "last")
    except Exception:  # nothing written yet, or nothing verifies
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {folder} (step {checkpoint_step(folder)})"


def _learning_rate(scheduler) -> float:
    """The first group's current rate, from the schedule on the host: under CUDA graphs the
    optimizer holds it in a device tensor, and reading that would cost a sync."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)


def _device(name: str | None) -> torch.device:
    if name:
        return resolve_device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_examples(head, examples, keys_only: bool = False) -> None:
    """Every example checked by the head; the first problem names its file and line.
    `keys_only`: only the keys every example needs (`Head.check_keys`; a head type will do)."""
    check = head.check_keys if keys_only else head.check_example
    for i in range(len(examples)):
        try:
            check(examples[i])
        except ValueError as err:
            raise DataError(f"{where(examples, i)}: {err}") from None


def _encode(model: TaskModel, examples, names, tokenizer, max_length) -> Encoded:
    """model.encode; a problem it finds in "example N" (a QA answer that makes no token, a
    question longer than max_length) is named by its file and line, as check_examples names them."""
    try:
        return model.encode(examples, names, tokenizer, max_length)
    except ValueError as err:
        found = re.match(r"example (\d+)\b:? *", str(err))
        if not found:
            raise
        raise DataError(f"{where(examples, int(found[1]) - 1)}: {str(err)[found.end():]}") from None


def make_optimizer(model: TaskModel, args: TrainingArgs) -> torch.optim.Optimizer:
    """AdamW; no decay on biases and LayerNorm weights; optional layer-wise lr decay."""
    encoder = model.encoder
    layers = encoder.config.num_hidden_layers
    depth = {}
    for name, p in encoder.named_parameters():
        if name.startswith("embeddings."):
            depth[id(p)] = 0
        elif name.startswith("encoder.layer."):
            depth[id(p)] = int(name.split(".")[2]) + 1
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias")
        scale = args.layerwise_lr_decay ** (layers + 1 - depth.get(id(p), layers + 1))
        groups.setdefault((0.0 if no_decay else args.weight_decay, scale), []).append(p)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    param_groups = [{"params": ps, "weight_decay": wd, "lr": args.learning_rate * scale}
                    for (wd, scale), ps in groups.items()]
    # fused: the whole step in one kernel, on CPU and CUDA; for MiniLM's parameters on one
    # CPU thread 66-74 ms a step against 325-419 ms for foreach (same results to 2.4e-7).
    try:
        return torch.optim.AdamW(param_groups, lr=args.learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(param_groups, lr=args.learning_rate, foreach=True)


def _resume(trainer: Trainer, optimizer, scheduler, resume_from) -> TrainState:
    """The state `resume_from` (a folder, or True for <output_dir>/last) holds, restored into
    the trainer's model, optimizer, scheduler and RNGs; rank 0 puts best/ right."""
    folder = trainer.output_dir / "last" if resume_from is True else resume_from
    best = trainer.output_dir / "best" if trainer.rank == 0 and trainer.args.save_checkpoints else None
    return resume(folder, trainer.model, optimizer, scheduler, trainer._identity, best=best, rank=trainer.rank)


def _check_run(trainer: Trainer, resume_from) -> None:
    """Before the first step: an unknown `metric_for_best` is refused now rather than after
    training, and a new run that saves checkpoints clears (or refuses) an earlier run's;
    those of this Trainer's own earlier fit() it replaces."""
    if trainer.distributed:
        _check_one_output(trainer)
    args = trainer.args
    if args.metric_for_best and trainer.eval_sets:
        _check_metric_for_best(trainer)
    elif (args.load_best_at_end or args.early_stopping_patience) and trainer.rank == 0 and \
            sum(len(d.heads) for d in trainer.eval_sets) > 1:   # which head decides is not obvious: the first
        logger.warning("several heads are evaluated; the best model and early stopping follow %s, the first eval "
                       "head's main metric: set metric_for_best to choose", best_metric(
                           trainer.model, trainer.eval_sets, None)[0])
    if not resume_from and trainer.rank == 0 and trainer.args.save_checkpoints:
        source = getattr(trainer.model.encoder, "source", None)
        check_new_run(trainer.output_dir, CHECKPOINT_FOLDERS,
                      trainer.args.overwrite_output_dir or getattr(trainer, "_fitted", False),
                      [(str(source), source)] if source else [])
    trainer._fitted = True


def _check_one_output(trainer: Trainer) -> None:
    """Every rank names the same output folder: rank 0 writes the checkpoints that all ranks
    resume from and load best/ from (else rank 1 fails on resume, or reads a stale run).
    Compared as given, not resolved: nodes may mount one shared folder at other paths."""
    if trainer.device.type == "cuda":   # object collectives on nccl go through the current device
        torch.cuda.set_device(trainer.device)
    folders = [None] * trainer.world
    dist.all_gather_object(folders, os.path.normpath(trainer.output_dir))
    other = next((r for r, folder in enumerate(folders) if folder != folders[0]), None)
    if other is not None:
        raise ValueError(f"the processes train into different output folders ({folders[0]} on rank 0, "
                         f"{folders[other]} on rank {other}); give every rank the same output_dir (--output)")


def _check_metric_for_best(trainer: Trainer) -> None:
    """Refuse a `metric_for_best` the evaluation does not report; its keys come from
    evaluating the first two examples of each eval set."""
    sets = trainer.eval_sets
    if all(len(d.heads) == 1 for d in sets):
        sample = {d.heads[0]: list(d.examples[:2]) for d in sets}
    else:
        sample = list(sets[0].examples[:2])
    with warnings.catch_warnings():        # `_fit` reseeds every RNG this touches
        warnings.simplefilter("ignore")    # metrics of two examples: undefined-metric warnings
        keys = trainer.evaluate(sample)
    if trainer.args.metric_for_best not in keys:
        raise ValueError(f"metric_for_best={trainer.args.metric_for_best!r} is not an eval metric of this run; "
                         f"use one of {', '.join(sorted(keys))}")


def best_metric(model: TaskModel, eval_sets: list[Encoded], metric_for_best: str | None) -> tuple[str, bool]:
    """(metric key, greater is better) that picks best/: `metric_for_best`, else the first
    eval head's main metric ("<head>/<metric>" for a model of several heads)."""
    if not eval_sets:
        return metric_for_best or "loss", False
    first = model.heads[eval_sets[0].heads[0]]
    several = len(model.heads) > 1
    key = metric_for_best or (f"{eval_sets[0].heads[0]}/" if several else "") + first.main_metric
    name, _, metric = key.rpartition("/")
    head = model.heads[name] if name in model.heads else first
    if metric.endswith("loss"):
        return key, False
    return key, bool(head.greater_is_better) if metric == head.main_metric else True


# The encoder's shape and dropout, which a resumed run must keep: pretrain --resume --heads 4 of a
# 2-head run trained on with 4 heads over the same weights, without a word.
ENCODER_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                "attention_probs_dropout_prob")


def run_identity(args: TrainingArgs, world: int, train_sets: list[Encoded], model: TaskModel) -> dict:
    """What a saved data position depends on: settings, world size, data and heads."""
    data = [{"heads": list(d.heads), "features": len(d.features),
             "crc32": zlib.crc32(b"".join(torch.tensor(f["input_ids"], dtype=torch.int32).numpy().tobytes()
                                          for f in d.features))} for d in train_sets]
    encoder = {k: v for k, v in model.encoder.config.to_dict().items() if k in ENCODER_KEYS}
    return {"args": {k: getattr(args, k) for k in RESUME_KEYS}, "world": world, "data": data,
            "heads": {n: h.get_config() for n, h in model.heads.items()}, "encoder": encoder}


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast when asked for and the device has it."""
    if not bf16:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("bf16=True but this GPU has no bfloat16; training in float32")
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
