"""Host cost of the eager GPU path, measured on the CPU: one encoder call on the Triton
path with every Triton launch stubbed out, against transformers' BertModel (SDPA) on the
same tiny tensors.

On a launch-bound GPU (small batches, a slow host) an eager call costs what its Python
and dispatcher work costs. Stubbing the launches leaves bertcore's own host work (autograd
Functions, checks, allocations, torch ops), so this compares the two designs' host work
without a GPU; the Triton launcher's own cost (a few launches per layer) comes on top.
Tiny shapes keep the torch ops' arithmetic negligible. Interleaved, best of 5, one thread.

    python benchmarks/host_cost.py [--layers 4] [--calls 100]
"""
import argparse
import importlib
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"     # the Triton path on CPU tensors; its launches are stubbed below

import torch  # noqa: E402


class _NoLaunch:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


KERNELS = {"attention": ("_attention_fwd_kernel", "_attention_bwd_kernel", "_attention_bwd_det_kernel",
                         "_attention_bwd_preprocess_kernel"),
           "layer_norm": ("_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel"),
           "bias_gelu": ("_bias_gelu_fwd_kernel", "_bias_gelu_bwd_kernel")}


def stub_launches():
    for module, names in KERNELS.items():
        mod = importlib.import_module(f"bertcore_kernels.{module}")   # the package rebinds the attribute names
        for name in names:
            setattr(mod, name, _NoLaunch())


def best_us(fns: dict, calls: int) -> dict:
    """Best-of-5 µs per call of each function, the functions' blocks interleaved."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(5):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args(argv)
    import transformers

    import bertcore
    from bertcore_kernels.dispatch import use_backend
    stub_launches()
    torch.set_num_threads(1)
    cfg = dict(vocab_size=100, hidden_size=64, num_hidden_layers=a.layers, num_attention_heads=2,
               intermediate_size=256, hidden_act="gelu")
    ours = bertcore.BertEncoder(bertcore.BertConfig(**cfg))
    hf = transformers.BertModel(transformers.BertConfig(**cfg, attn_implementation="sdpa"))
    ids = torch.randint(5, 100, (2, 32))
    packed, cu, mask = ids.flatten(), torch.tensor([0, 32, 64], dtype=torch.int32), torch.ones_like(ids)

    def bertcore_call(train):
        ours.train(train)
        with use_backend("triton"), torch.set_grad_enabled(train):
            out = ours(packed, cu_seqlens=cu, max_seqlen=32)
            if train:
                out.last_hidden_state.sum().backward()

    def hf_call(train):
        hf.train(train)
        with torch.set_grad_enabled(train):
            out = hf(ids, attention_mask=mask)
            if train:
                out.last_hidden_state.sum().backward()

    for train in (False, True):
        mode = "training step (fwd+bwd)" if train else "inference"
        us = best_us({"bertcore": lambda: bertcore_call(train), "hf": lambda: hf_call(train)}, a.calls)
        ours_us, hf_us = us["bertcore"] / a.layers, us["hf"] / a.layers
        print(f"{mode}: bertcore {ours_us:.0f} us per layer without its launches, transformers {hf_us:.0f} "
              f"(ratio {ours_us / hf_us:.2f}; whole calls over {a.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
