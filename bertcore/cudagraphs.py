"""Whole steps as CUDA graphs: one capture per bucket, then one replay per batch.

At the batch sizes people fine-tune with, a GPU step is bound by the host: hundreds
of kernel launches, each with Python and dispatcher time in front of it. A CUDA graph
records the launches of one step once and replays them with one call. It needs two
things from the step: static shapes (`bertcore.buckets` rounds batches up to a few
of them) and no host sync inside (the encoder checks token values only on host
tensors, dropout seeds live on the device, the optimizer is AdamW with
`fused=True, capturable=True` and its learning rate in a device tensor the
scheduler fills in place).

    cache = GraphCache(fn, warmup=1, name="inference")
    out = cache(inputs, key)       # inputs: dict of device tensors (+ host values)

`GraphCache` runs `fn` eagerly for the first `warmup` calls of a key (on a side
stream, as capture wants: cuBLAS and Triton set themselves up there), captures it
on the next call, then copies each call's inputs into the captured buffers and
replays. Outputs of a replay are the graph's own buffers: read them before the next
call. A cache's graphs share one memory pool of its own (what one bucket's step
frees, the next bucket's capture reuses: they run one at a time, and the tensors
that must outlive a replay, its inputs and outputs, stay referenced). The pool is
never shared between caches: torch's allocator refuses to capture into a pool whose
graphs were all freed while some of its memory is still held (an internal assert,
"use_count > 0"), which a process-wide pool met as soon as one model's graphs were
dropped and another model captured (seen on an H200). A capture that fails logs its
reason once and the cache runs `fn` eagerly from then on.

`TrainStep` is the training step in that form (zero grads, forward, loss,
backward, clipping, AdamW); `TaskModel.run` uses a cache for inference. Nothing
here runs on a CPU: callers check `usable(device)` first.
"""
import logging
import weakref
from contextlib import nullcontext

import torch

logger = logging.getLogger(__name__)


def usable(device) -> bool:
    """Whether CUDA graphs can run on `device`: a CUDA device of this machine."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def param_key(module: torch.nn.Module) -> tuple:
    """Where the module's parameters live: a captured graph reads them at these
    addresses, so a graph is only valid while they stay put."""
    return tuple(p.data_ptr() for p in module.parameters())


class _Entry:
    def __init__(self):
        self.calls = 0
        self.graph = None
        self.static: dict = {}
        self.outputs = None


class GraphCache:
    """`fn(inputs)` captured once per key and replayed (see the module docstring).

    `fn` takes a dict of tensors and host values and returns tensors (or a dict,
    list or tuple of them). Host values in `inputs` must be part of `key`: a replay
    reuses the ones seen at capture."""

    def __init__(self, fn, warmup: int = 1, name: str = "step"):
        self.fn, self.warmup, self.name = fn, warmup, name
        self.pool = None                 # this cache's memory pool, made at its first capture
        self.entries: dict = {}
        self.failed: str | None = None   # why capture failed; set once, then all calls run eagerly
        self.memory_bytes = 0            # device memory the captures took (growth of the reserved memory)

    def __call__(self, inputs: dict, key):
        if self.failed is not None:
            return self.fn(inputs)
        entry = self.entries.setdefault(key, _Entry())
        if entry.calls < self.warmup:
            entry.calls += 1
            return _on_side_stream(self.fn, inputs)
        if entry.graph is None:
            stream = torch.cuda.current_stream()
            try:
                self._capture(entry, inputs, key)
            except Exception as err:  # any capture failure: fall back, say why once
                torch.cuda.set_stream(stream)   # a failed capture_end leaves the capture stream current
                _recover_from_failed_capture()
                self.pool = None                # left recording by the failed capture: never reused
                self.failed = f"{type(err).__name__}: {err}".splitlines()[0]
                self.entries.clear()
                logger.warning("CUDA graph capture of the %s failed, running it eagerly from now on: %s",
                               self.name, self.failed)
                torch.cuda.synchronize()
                return self.fn(inputs)
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                entry.static[k].copy_(v, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, entry: _Entry, inputs: dict, key) -> None:
        entry.static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        torch.cuda.synchronize()
        torch.cuda.empty_cache()                 # what capture does first: measure growth from there
        before = torch.cuda.memory_reserved()
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                entry.outputs = self.fn(entry.static)
        except BaseException:
            graph.reset()     # torch >= 2.13: drops the generator's state for this capture
            raise
        entry.graph = graph
        grown = torch.cuda.memory_reserved() - before
        self.memory_bytes += max(grown, 0)
        logger.info("captured the %s as a CUDA graph for %s (+%.1f MiB; %d graphs, %.1f MiB)", self.name, key,
                    grown / 2 ** 20, len(self.entries), self.memory_bytes / 2 ** 20)

    @property
    def graphs(self) -> int:
        """How many graphs are captured."""
        return sum(e.graph is not None for e in self.entries.values())


def _recover_from_failed_capture() -> None:
    """Leave the process able to capture and draw random numbers again after a capture
    failed. torch ends a capture's bookkeeping only when `capture_end` succeeds, so a
    failed one leaves the caching allocator recording into its pool (every later
    capture into that pool fails: "beginAllocateToPool: already recording"; the caller
    drops the pool) and, before torch 2.13, the CUDA generator in capture mode (every
    later random op outside a capture fails: "Offset increment outside graph capture").
    A one-kernel capture that does end runs the generator's capture epilogue."""
    probe = torch.cuda.CUDAGraph()
    with torch.cuda.graph(probe, pool=torch.cuda.graph_pool_handle()):
        torch.zeros(1, device="cuda")
    torch.cuda.synchronize()


def _on_side_stream(fn, inputs):
    """fn(inputs) on a side stream, as a warm-up before capture must run."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(inputs)
    torch.cuda.current_stream().wait_stream(side)
    return out


def autocast_state() -> torch.dtype | None:
    """The autocast dtype in force on CUDA (part of a graph's key), or None."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


def no_autocast_cache(dtype):
    """Autocast as the caller had it, minus the cast-weight cache, which must not be
    used across a capture (its casts would be captured once and never redone)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Ready a fused AdamW for capture: `capturable` on, each group's lr a device tensor
    (float32, what the fused kernel reads) that LR schedulers fill in place, so a replay
    uses the current rate. Raises ValueError for an optimizer that cannot be captured."""
    if not isinstance(optimizer, torch.optim.AdamW) or not all(g.get("fused") for g in optimizer.param_groups):
        raise ValueError("CUDA graph steps need torch.optim.AdamW(fused=True) (the Trainer's make_optimizer)")
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def portable(state: dict) -> dict:
    """An optimizer's or LR scheduler's state dict as an eager CPU run would save it:
    learning rates as floats, `capturable` off (resuming with graphs turns it back on).
    Checkpoints stay loadable anywhere; reading the rates syncs, once per checkpoint."""
    state = dict(state)
    if "param_groups" in state:
        state["param_groups"] = [{**g, "lr": float(g["lr"]), "capturable": False} if isinstance(g["lr"], torch.Tensor)
                                 else g for g in state["param_groups"]]
    if "_last_lr" in state:
        state["_last_lr"] = [float(v) for v in state["_last_lr"]]
    return state


class TrainStep:
    """One optimizer step of a TaskModel on a bucketed batch, as a CUDA graph per bucket:
    zero the gradients, forward, weighted loss, backward, clip to `max_grad_norm`,
    AdamW, under bf16/fp16 autocast when `dtype` is given. A step whose loss or gradient
    norm is not finite leaves the weights and the optimizer state as they were (the
    fused AdamW's `found_inf`).

    `step(batch, heads)` returns a (3,) device tensor [loss, 1.0 if not finite, gradient
    norm before clipping]; it is the graph's buffer, so read it before the next step.
    The gradients are the step's own temporaries: autograd makes them in the backward,
    inside the graph's memory pool, and the step drops them after AdamW, so the
    parameters' `.grad` is None between steps. Made inside the graph, they appear as the
    backward frees activations, as in an eager step; buffers kept across steps would
    all be live at the forward's peak (on an H200 that cost bert-base 100-300 MB more
    than transformers' step). As in an eager step, only parameters that get a gradient
    are clipped and stepped (another task's head, or the pooler under a token head, are
    left alone), and the eager warm-up step of each bucket makes AdamW's state for them
    before the capture. Gradient accumulation and DDP are not captured: the Trainer
    runs those eagerly."""

    def __init__(self, model, optimizer, max_grad_norm: float | None, loss_weights: dict | None = None,
                 dtype: torch.dtype | None = None, warmup: int = 1):
        if warmup < 1:
            raise ValueError("TrainStep needs warmup >= 1 (the eager step that makes AdamW's state)")
        make_capturable(optimizer)
        self.model, self.optimizer = model, optimizer
        self.max_grad_norm = max_grad_norm or float("inf")
        self.loss_weights, self.dtype = loss_weights or {}, dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.found_inf = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        self.cache = GraphCache(self._step, warmup=warmup, name="training step")

    def __call__(self, batch: dict, heads) -> torch.Tensor:
        inputs = {**batch, "_heads": tuple(heads), "_autocast": self.dtype}
        return self.cache(inputs, graph_key(inputs, self.model))

    def _step(self, inputs: dict) -> torch.Tensor:
        model, opt = self.model, self.optimizer
        batch = {k: v for k, v in inputs.items() if not k.startswith("_")}
        try:
            opt.zero_grad(set_to_none=True)
            with no_autocast_cache(inputs["_autocast"]):
                logits = model(batch, head=list(inputs["_heads"]))
                loss = model.compute_loss(logits, batch, self.loss_weights)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            loss, norm = loss.detach().float(), norm.float()
            self.found_inf.copy_((~torch.isfinite(loss) | ~torch.isfinite(norm)).float())
            opt.found_inf = self.found_inf   # read by the fused AdamW: skip the update when set
            opt.step()
        finally:
            opt.__dict__.pop("found_inf", None)
            opt.zero_grad(set_to_none=True)
        return torch.stack([loss, self.found_inf, norm])

    @property
    def memory_bytes(self) -> int:
        """Device memory the captured graphs took (their pool: activations and gradients)."""
        return self.cache.memory_bytes

    def report(self) -> dict:
        """{"graphs", "memory_mb", "failed"} of this step's graphs, also logged."""
        stats = {"graphs": self.cache.graphs, "memory_mb": self.memory_bytes / 2 ** 20, "failed": self.cache.failed}
        logger.info("training ran on %(graphs)d CUDA graphs holding %(memory_mb).0f MiB; "
                    "failed capture: %(failed)s", stats)
        return stats


def train_step_for(model, optimizer, args, device, distributed: bool) -> "TrainStep | None":
    """The Trainer's CUDA-graph training step where `args.cuda_graphs` applies (CUDA, one
    process, no gradient accumulation), else None: train eagerly, saying why."""
    if args.cuda_graphs is False or not usable(device):
        if args.cuda_graphs:
            logger.warning("cuda_graphs=True, but the device is %s: training eagerly", device)
        return None
    why = "grad_accum_steps > 1" if args.grad_accum_steps > 1 else "DDP" if distributed else None
    if why is None:
        dtype = torch.bfloat16 if args.bf16 and torch.cuda.is_bf16_supported() else None
        if args.bf16 and dtype is None:
            logger.warning("bf16=True but this GPU has no bfloat16; training in float32")
        try:
            return TrainStep(model, optimizer, args.max_grad_norm, args.loss_weights, dtype)
        except ValueError as err:
            why = str(err)
    (logger.warning if args.cuda_graphs else logger.info)("training steps run eagerly, not as CUDA graphs: %s", why)
    return None


class Forward:
    """`TaskModel.forward` in eval mode on bucketed batches, as a CUDA graph per bucket
    (`TaskModel.run` uses it: prediction and evaluation). Holds the model weakly, so
    `forward_of` can keep one per model without keeping the model alive."""

    def __init__(self, model, warmup: int = 1):
        self.model = weakref.ref(model)
        self.cache = GraphCache(self._forward, warmup=warmup, name="inference forward")

    def __call__(self, batch: dict, heads):
        inputs = {**batch, "_heads": tuple(heads), "_autocast": autocast_state()}
        return self.cache(inputs, graph_key(inputs, self.model()))

    @torch.no_grad()
    def _forward(self, inputs: dict):
        batch = {k: v for k, v in inputs.items() if not k.startswith("_")}
        with no_autocast_cache(inputs["_autocast"]):
            return self.model()(batch, head=list(inputs["_heads"]))


_FORWARDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def forward_of(model) -> Forward:
    """The model's graphed inference forward (one per model, made on first use)."""
    if model not in _FORWARDS:
        _FORWARDS[model] = Forward(model)
    return _FORWARDS[model]


def graph_key(inputs: dict, model) -> tuple:
    """What a captured step depends on besides tensor contents: the heads, the static
    sizes and host values of the batch, autocast, and where the parameters live."""
    sizes = tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in inputs.items() if isinstance(v, torch.Tensor)))
    host = tuple(sorted((k, v) for k, v in inputs.items()
                        if not isinstance(v, torch.Tensor) and k not in ("num_sequences", "num_tokens")))
    return sizes, host, param_key(model)
