"""Padded (B, L) batches ⇄ packed (total_tokens,) tokens with cu_seqlens.

The encoder runs every layer on packed tokens, so padding costs no FLOPs; these
helpers convert once at the input and once at the output.
"""
from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where the real tokens of a padded batch sit, and their sequence offsets."""

    indices: torch.Tensor     # (T,) int64: flat (b * L + l) index of each real token
    cu_seqlens: torch.Tensor  # (B+1,) int32: start offset of each sequence in the packed tokens
    max_seqlen: int           # longest sequence, on the host
    batch: int
    seqlen: int


def unpad(attention_mask: torch.Tensor) -> Packing:
    """Packing for a (B, L) mask of 1 = real token, 0 = padding (any layout of holes).

    Reads the B lengths to the host once (on a GPU, the padded call's one device sync);
    the token indices then come from `nonzero_static`, which needs no second one. A
    mask without holes packs as a plain reshape (`indices` None)."""
    batch, seqlen = attention_mask.shape
    mask = attention_mask.bool()
    seqlens = mask.sum(1, dtype=torch.int32)                                   # (B,)
    lengths = seqlens.tolist()
    total = sum(lengths)
    indices = None if total == batch * seqlen else mask.flatten().nonzero_static(size=total).flatten()  # (T,)
    cu_seqlens = torch.nn.functional.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))  # (B+1,)
    return Packing(indices, cu_seqlens, max(lengths, default=0), batch, seqlen)


def full_packing(batch: int, seqlen: int, device) -> Packing:
    """Packing of a batch without padding: the packed tokens are the padded ones, reshaped."""
    cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
    return Packing(None, cu_seqlens, seqlen, batch, seqlen)


def pack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(B, L, ...) → (T, ...)."""
    flat = x.reshape(packing.batch * packing.seqlen, *x.shape[2:])
    return flat if packing.indices is None else flat.index_select(0, packing.indices)


def repad(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(T, ...) → (B, L, ...), zeros at padding."""
    if packing.indices is not None:
        x = x.new_zeros(packing.batch * packing.seqlen, *x.shape[1:]).index_copy_(0, packing.indices, x)
    return x.view(packing.batch, packing.seqlen, *x.shape[1:])


def position_ids_packed(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(T,) position of each packed token inside its own sequence (restarts at 0)."""
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()                        # (B,)
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), seqlens, output_size=total)  # (T,)
    return torch.arange(total, device=cu_seqlens.device) - starts


def collate_packed(sequences: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Host-side packing of token lists: (flat ids (T,), cu_seqlens (B+1,) int32, max_seqlen)."""
    lengths = [len(s) for s in sequences]
    flat = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=device)
    return flat, cu_seqlens, max(lengths, default=0)

