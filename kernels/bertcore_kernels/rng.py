"""Dropout seeds that live on the device, so a captured CUDA graph draws fresh masks.

A Triton dropout kernel needs a Philox seed. Drawing it on the host (`.item()` of a
`torch.randint`) costs a device sync per op and, worse, is frozen into a CUDA graph:
every replay would reuse the captured seed and drop the same units. Here each device
holds a (1,) int64 state, base + k * STEP after k draws (wrapping in 64 bits);
`next_seed(device)` returns a fresh (1,) int64 seed computed *on the device* from it
(its low 63 bits) and advances it by STEP with a device op: two small kernels per
draw, no views, on the launch-bound eager path. Both are kernels, so each replay of a
captured graph advances the state and draws new masks.

The base follows torch's generator for the device, so `torch.manual_seed(s)` repeats
a run: on CUDA the state restarts when the generator's seed changes or its Philox
offset goes back (a reseed sets it to 0; a restart bumps it by 4 so that a reseed to
the same seed is noticed); on the CPU (the Triton interpreter) each call draws its
base from the CPU generator when that generator moved since the last call.

Kernels read the seed with `tl.load(SEED)`; an autograd Function saves the same
(1,) tensor for its backward, which regenerates the forward's mask from it.
"""
import torch

# Odd 63-bit multiplier (golden-ratio bits): consecutive counters give seeds far apart.
_STEP = 0x1E3779B97F4A7C15
_MASK_63 = (1 << 63) - 1

# device -> (mark of torch's generator after our last call, (1,) int64 base + k * _STEP)
_STATE: dict[torch.device, tuple] = {}


def _canonical(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _restart(device: torch.device):
    """A new state tensor whose base is a function of torch's generator; returns (mark, state)."""
    if device.type == "cuda":
        gen = torch.cuda.default_generators[device.index]
        seed, offset = gen.initial_seed(), gen.get_offset()
        base = (seed * _STEP + offset) & _MASK_63
        gen.set_offset(offset + 4)
    else:
        base = int(torch.randint(0, 2**62, (1,)).item())     # a host draw: no device involved
    return _mark(device), torch.tensor([base], dtype=torch.int64, device=device)


def _mark(device: torch.device):
    """Where torch's generator for `device` stands: (seed, Philox offset) on CUDA, the
    whole generator state on the CPU. Host values: no sync."""
    if device.type == "cuda":
        gen = torch.cuda.default_generators[device.index]
        return gen.initial_seed(), gen.get_offset()
    return torch.default_generator.get_state()


def _moved(device: torch.device, old, new) -> bool:
    if device.type == "cuda":       # reseeded: another seed, or the offset went back
        return new[0] != old[0] or new[1] < old[1]
    return not torch.equal(new, old)


def next_seed(device) -> torch.Tensor:
    """A fresh (1,) int64 seed on `device`, without a host sync and safe to capture in a
    CUDA graph (each replay gets a new one). `torch.manual_seed` repeats the sequence."""
    device = _canonical(device)
    entry = _STATE.get(device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    mark = None if capturing else _mark(device)
    if entry is None or (mark is not None and _moved(device, entry[0], mark)):
        if capturing:
            raise RuntimeError("draw one dropout seed before capturing a CUDA graph (a warm-up step)")
        entry = _restart(device)
    elif device.type == "cuda" and mark is not None:
        entry = (mark, entry[1])     # other CUDA random ops moved the offset on: follow it
    _STATE[device] = entry
    state = entry[1]
    seed = state.bitwise_and(_MASK_63)                                 # (1,) on the device, a new tensor
    state.add_(_STEP)                                                  # wraps in 64 bits, as it should
    return seed


def seed_tensor(seed: int, device) -> torch.Tensor:
    """A caller's explicit int seed as the (1,) int64 device tensor kernels read."""
    return torch.tensor([int(seed) & _MASK_63], dtype=torch.int64, device=device)
