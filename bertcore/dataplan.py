"""The data plan: which micro-batch comes when, as pure functions of the settings.

Data order is a function of (seed, epoch) alone, so a checkpoint's data position is
just (epoch, index into the plan) and a resumed run sees exactly the batches an
uninterrupted one would. Under torchrun each rank takes its slice of every global
batch.
"""
import math

import torch


def epoch_plan(sizes: list[int], *, seed: int, epoch: int, batch_size: int, world: int = 1, rank: int = 0,
               sampling: str = "round_robin") -> list[tuple[int, list[int]]]:
    """[(task index, this rank's feature indices), ...] for one epoch over tasks with
    `sizes[t]` features each. Global batches are batch_size × world; rank r takes
    [r::world]. Several tasks interleave round robin, or as a shuffled sequence of task
    draws proportional to their batch counts (`sampling="proportional"`)."""
    per_task = []
    global_batch = batch_size * world
    for t, size in enumerate(sizes):
        if size < world:   # a rank with an empty batch would fail, or wait for the others for ever
            raise ValueError(f"{size} training features{f' for task {t}' if len(sizes) > 1 else ''} for {world} "
                             "processes; each process needs one at least: train on more data or fewer processes")
        g = torch.Generator().manual_seed(seed * 1000003 + epoch * 101 + t)
        order = torch.randperm(size, generator=g).tolist()
        batches = [order[i:i + global_batch] for i in range(0, len(order), global_batch)]
        if len(batches) > 1 and len(batches[-1]) < world:  # a rank would get nothing
            batches.pop()
        per_task.append([(t, b[rank::world]) for b in batches])
    if len(per_task) == 1:
        return per_task[0]
    if sampling == "proportional":
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        slots = [t for t, batches in enumerate(per_task) for _ in batches]
        slots = [slots[i] for i in torch.randperm(len(slots), generator=g).tolist()]
        cursors = [iter(b) for b in per_task]
        return [next(cursors[t]) for t in slots]
    plan, cursors = [], [iter(b) for b in per_task]
    while cursors:
        for it in list(cursors):
            item = next(it, None)
            if item is None:
                cursors.remove(it)
            else:
                plan.append(item)
    return plan


def total_steps(micro_batches_per_epoch: int, *, epochs: int, grad_accum_steps: int,
                max_steps: int | None = None) -> int:
    """Optimizer steps in the run: `max_steps` when given, else every epoch's micro-batches
    in groups of `grad_accum_steps` (the last group of an epoch may be short)."""
    if max_steps:
        return max_steps
    return epochs * math.ceil(micro_batches_per_epoch / grad_accum_steps)


def linear_schedule(warmup: int, total: int):
    """Learning-rate factor of optimizer step s, as transformers'
    `get_linear_schedule_with_warmup`: s/warmup while warming up, then linear to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor
