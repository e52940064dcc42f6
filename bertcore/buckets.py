"""Static batch shapes: a packed batch padded up to a bucket, so a CUDA graph captured
for one bucket replays for every batch that falls in it.

A packed batch has three sizes that vary from batch to batch: its token count T, its
sequence count B and its longest sequence. Bucketing rounds each up:

  max_seqlen  to the next of `seqlens` (64, 128, 256, 512 by default)
  T           to a multiple of step(T) = max(64, 2**(floor(log2 T) - 3)): at most
              1/8 more tokens, so a few buckets cover everything from 64 to 64k tokens
  B           to `batch_size + pad_slots`: the real sequences, then `pad_slots`
              padding sequences that hold the padding tokens (each no longer than
              the max_seqlen bucket, so attention over them stays cheap), then
              zero-length sequences for a batch short of `batch_size`

Padding tokens are `pad_token_id` with segment 0, in sequences of their own, so no
real token attends to them: the real sequences' outputs, and so the loss and the
gradients, are those of the unbucketed batch. Labels of padding are IGNORE_INDEX,
which every bertcore loss skips; a label that cannot be ignored (a float target)
makes a batch unbucketable, and `bucketable_keys` says so.

    shape = Buckets(batch_size=16).shape(lengths)
    padded = pad_batch(batch, shape, sequence_keys=("labels",))
    logits = unpad_outputs(model(padded), padded)    # rows of the real batch only
"""
import math
from dataclasses import dataclass

import torch

from .masking import IGNORE_INDEX

SEQLEN_BUCKETS = (64, 128, 256, 512)
MIN_TOKEN_STEP = 64
STEP_FRACTION_BITS = 3  # step(T) = 2**(floor(log2 T) - 3): at most 1/8 padding


@dataclass(frozen=True)
class BucketShape:
    """The static sizes of a bucketed batch and the real ones it came from."""

    tokens: int          # T of the padded batch
    sequences: int       # B of the padded batch (len(cu_seqlens) - 1)
    max_seqlen: int      # the max_seqlen bucket
    pad_slots: int       # padding sequences that hold the padding tokens
    real_tokens: int
    real_sequences: int

    @property
    def key(self) -> tuple[int, int, int]:
        """What a captured graph depends on: the padded sizes."""
        return self.tokens, self.sequences, self.max_seqlen


def token_step(tokens: int) -> int:
    """The rounding step of a token count: 1/8 of its power of two, at least 64."""
    if tokens <= 0:
        return MIN_TOKEN_STEP
    return max(MIN_TOKEN_STEP, 2 ** (int(math.log2(tokens)) - STEP_FRACTION_BITS))


def round_tokens(tokens: int) -> int:
    """T rounded up to its bucket (at least one step)."""
    step = token_step(tokens)
    return max(step, -(-tokens // step) * step)


@dataclass(frozen=True)
class Buckets:
    """How batches of at most `batch_size` sequences are rounded up. `seqlens` must
    cover the longest sequence a batch may hold (the tokenizer's max_length); a
    longer one is an error."""

    batch_size: int
    seqlens: tuple[int, ...] = SEQLEN_BUCKETS

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not self.seqlens or list(self.seqlens) != sorted(set(self.seqlens)) or self.seqlens[0] < 1:
            raise ValueError(f"seqlens={self.seqlens} must be rising positive lengths")

    def seqlen(self, longest: int) -> int:
        """The max_seqlen bucket of a batch whose longest sequence has `longest` tokens."""
        for bucket in self.seqlens:
            if longest <= bucket:
                return bucket
        raise ValueError(f"a sequence has {longest} tokens, over the largest bucket {self.seqlens[-1]}; "
                         "truncate it (max_length) or add a larger bucket")

    def shape(self, lengths: list[int]) -> BucketShape:
        """The bucket of a batch with these sequence lengths (host ints)."""
        if len(lengths) > self.batch_size:
            raise ValueError(f"the batch has {len(lengths)} sequences, over batch_size={self.batch_size}")
        real = sum(lengths)
        seqlen = self.seqlen(max(lengths, default=0))
        tokens = round_tokens(real)
        # One padding sequence per max_seqlen tokens of the largest padding this bucket can need.
        slots = -(-token_step(tokens - 1) // seqlen)
        sequences = self.batch_size + slots
        if tokens == sequences:  # keep (T, ...) and (B, ...) outputs tellable apart by their rows
            slots, sequences = slots + 1, sequences + 1
        return BucketShape(tokens, sequences, seqlen, slots, real, len(lengths))


def padded_offsets(cu_seqlens: list[int], shape: BucketShape) -> list[int]:
    """cu_seqlens of the padded batch: the real offsets, the padding tokens spread evenly
    over `pad_slots` sequences, then zero-length sequences up to `shape.sequences`."""
    offsets = list(cu_seqlens)
    padding = shape.tokens - shape.real_tokens
    per_slot, extra = divmod(padding, shape.pad_slots)
    for i in range(shape.pad_slots):
        offsets.append(offsets[-1] + per_slot + (i < extra))
    offsets += [shape.tokens] * (shape.sequences + 1 - len(offsets))
    return offsets


def pad_batch(batch: dict, shape: BucketShape, sequence_keys=(), token_keys=(),
              pad_token_id: int = 0) -> dict:
    """A packed batch (host tensors, as `TaskModel.collate` makes them) padded to `shape`.

    `sequence_keys`: label tensors with one row per sequence, padded with IGNORE_INDEX
    rows; `token_keys`: per-token label tensors (T, ...), padded the same way. Every
    other tensor key is an error: this function cannot know how to pad it. Adds
    `num_sequences` and `num_tokens` (host ints: the real batch) for `unpad_outputs`."""
    known = {"input_ids", "token_type_ids", "position_ids", "cu_seqlens", "max_seqlen"}
    other = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in known
             and k not in sequence_keys and k not in token_keys]
    if other:
        raise ValueError(f"cannot bucket batch keys {other}: pass them as sequence_keys or token_keys")
    offsets = batch["cu_seqlens"].tolist()
    if len(offsets) - 1 != shape.real_sequences or offsets[-1] != shape.real_tokens:
        raise ValueError(f"the batch ({len(offsets) - 1} sequences, {offsets[-1]} tokens) is not the one "
                         f"the shape was made for ({shape.real_sequences}, {shape.real_tokens})")
    extra_tokens = shape.tokens - shape.real_tokens
    extra_rows = shape.sequences - shape.real_sequences
    out = dict(batch)
    out["input_ids"] = _pad_rows(batch["input_ids"], extra_tokens, pad_token_id)
    for key in ("token_type_ids", "position_ids"):
        if key in batch:
            out[key] = _pad_rows(batch[key], extra_tokens, 0)
    out["cu_seqlens"] = torch.tensor(padded_offsets(offsets, shape), dtype=batch["cu_seqlens"].dtype)
    out["max_seqlen"] = shape.max_seqlen
    for key in sequence_keys:
        if key in batch:
            out[key] = _pad_rows(batch[key], extra_rows, IGNORE_INDEX)
    for key in token_keys:
        if key in batch:
            out[key] = _pad_rows(batch[key], extra_tokens, IGNORE_INDEX)
    out["num_sequences"], out["num_tokens"] = shape.real_sequences, shape.real_tokens
    return out


def _pad_rows(t: torch.Tensor, rows: int, value) -> torch.Tensor:
    return torch.cat([t, t.new_full((rows, *t.shape[1:]), value)]) if rows else t


def unpad_outputs(outputs, batch: dict):
    """Outputs of a bucketed batch cut back to the real batch: tensors with one row per
    padded sequence keep the real sequences' rows, tensors with one row per padded token
    the real tokens' rows; dicts, lists and tuples are cut item by item. Outputs of an
    unbucketed batch come back as they are."""
    if "num_sequences" not in batch:
        return outputs
    if isinstance(outputs, dict):
        return {k: unpad_outputs(v, batch) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(unpad_outputs(v, batch) for v in outputs)
    if not isinstance(outputs, torch.Tensor) or outputs.dim() == 0:
        return outputs
    rows = outputs.shape[0]
    if rows == batch["cu_seqlens"].shape[0] - 1:
        return outputs[:batch["num_sequences"]]
    if rows == batch["input_ids"].shape[0]:
        return outputs[:batch["num_tokens"]]
    return outputs


def real_batch(batch: dict) -> dict:
    """The unbucketed view of a bucketed batch's host tensors (what heads' `split` and
    `loss_count` read): the real tokens, offsets and label rows."""
    if "num_sequences" not in batch:
        return batch
    b, t = batch["num_sequences"], batch["num_tokens"]
    rows = batch["cu_seqlens"].shape[0] - 1
    total = batch["input_ids"].shape[0]
    out = {}
    for key, value in batch.items():
        if key in ("num_sequences", "num_tokens"):
            continue
        if key == "cu_seqlens":
            out[key] = value[:b + 1]
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
            out[key] = value[:b]
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == total:
            out[key] = value[:t]
        else:
            out[key] = value
    offsets = out["cu_seqlens"].tolist()
    out["max_seqlen"] = max((y - x for x, y in zip(offsets, offsets[1:])), default=0)
    return out
