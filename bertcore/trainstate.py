"""Where a training run is: `TrainState`, plus the RNG states that make resume exact.

Everything here is plain data (ints, floats, strings, lists, dicts) and tensors, so a
checkpoint stores it with `torch.save` and reads it back with
`torch.load(weights_only=True)`: nothing in a checkpoint is ever unpickled as code.
"""
import random
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch


@dataclass
class TrainState:
    """The loop's position and bookkeeping. `position` is the index, in the epoch's
    plan (`dataplan.epoch_plan`), of the next micro-batch to run."""

    epoch: int = 0
    position: int = 0
    step: int = 0                      # optimizer steps done
    best: float | None = None          # best value of the metric that picks best/
    best_step: int | None = None
    bad_evals: int = 0                 # evaluations since the best one (early stopping)
    history: list = field(default_factory=list)   # one metrics dict per evaluation
    finished: bool = False             # resumed from the checkpoint that ended its run: nothing to do

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain data."""
    version, keys, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                       "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's RNGs (all CUDA devices too): with one seed,
    a CPU run (head initialisation, dropout, data order, masking) repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
