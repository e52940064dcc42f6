"""The demo's pretraining recipes side by side (README, "The demo"): held-out MLM accuracy
(15% masked, test text) after pretraining, and with --finetune the lift each gives
sentiment and NER, measured on validation examples (the pools' tails, `Demo.read`), never
on the demo's test sets.

    python benchmarks/demo_ablations.py [--steps N] [--threads 1] [--seed 42] [--finetune [--rates LR ...]] [RECIPE ...]

Writes benchmarks/results/amd-epyc-2-cores/demo-ablations.csv (recipe, steps, held-out MLM,
seconds) and, with --finetune, demo-ablation-lifts.csv (recipe, steps, task, size,
pretrained, random, lift, each encoder's rate): rows of earlier runs with another recipe,
step count or seed stay.
"""
import argparse
import collections
import csv
import dataclasses
import io
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bertcore.demo import Demo, DemoSize, run_jobs, summarize
from bertcore.files import write_text

# The demo had two heads, both starting local, and 2500 pretraining steps until the
# four-head recipe: the recipes measured on it keep its two heads (`TWO_HEADS`), so each
# name still reruns the row it has in the CSVs.
TWO_HEADS = {"heads": 2}
RECIPES = {  # name: DemoSize fields that differ from the demo's own
    "local": {},
    "two-heads": TWO_HEADS,                 # the previous demo
    "bert-init": {**TWO_HEADS, "local_attention": ()},
    "local-lr-1e-3": {**TWO_HEADS, "pretrain_lr": 1e-3},
    # twice the pairs per step, 1700 steps (~35% more time than the demo's 2500)
    "local-batch-64": {**TWO_HEADS, "pretrain_batch": 64, "pretrain_lr": 2.8e-3, "step_scale": 0.68},
    "local-4-heads": {"local_attention": (-2, -1, 1, 2)},
    "local-2-of-8-heads": {"heads": 8},
    "local-4-of-8-heads": {"heads": 8, "local_attention": (-2, -1, 1, 2)},
    "length-64": {"max_length": 64, "pretrain_batch": 16},   # the same characters per step
    "cls-sentiment": {"sentiment_pooling": "cls"},
    "finetune-no-dropout": {"finetune_dropout": 0.0},
    "bert-init-vocab-6000": {**TWO_HEADS, "local_attention": (), "vocab": 6000},
    "whole-word": {**TWO_HEADS, "whole_word": True},     # People's Daily's words masked whole (BERT-wwm)
    # where the lift comes from: the reviews alone (no news text), and a control with
    # every document's characters shuffled (the same characters, no order)
    "reviews-only": {"corpus_paragraphs": 0},
    "shuffled-chars": {"shuffle_corpus": True},
    "two-heads-reviews-only": {**TWO_HEADS, "corpus_paragraphs": 0},
    "two-heads-shuffled-chars": {**TWO_HEADS, "shuffle_corpus": True},
    # the demo's pretraining, fine-tuned differently (both encoders alike)
    "finetune-lr-1e-3": {**TWO_HEADS, "sentiment_lr": 1e-3, "ner_lr": 1e-3},
    "finetune-lr-8e-3": {**TWO_HEADS, "sentiment_lr": 8e-3, "ner_lr": 8e-3},
    "frozen-encoder": {**TWO_HEADS, "freeze_encoder": True, "sentiment_lr": 1e-2, "ner_lr": 1e-2},
    "finetune-300-steps": {**TWO_HEADS, "finetune_steps": 300},
    # bigger encoders than the demo's budget allows: how much lift more pretraining compute buys
    "two-layers": {**TWO_HEADS, "layers": 2, "pretrain_lr": 1e-3},
    "wide-256": {**TWO_HEADS, "hidden": 256, "intermediate": 1024, "pretrain_lr": 1e-3},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE")
    p.add_argument("--steps", type=int, default=DemoSize.pretrain_steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune both tasks at the demo's sizes and seeds, scored on validation examples")
    p.add_argument("--rates", type=float, nargs="+", metavar="LR",
                   help="with --finetune: fine-tune at each of these rates and give each encoder, task and size "
                        "its best one (as BERT's paper chose on dev sets); default: the demo's rates")
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "amd-epyc-2-cores"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, lifts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            fields = dict(RECIPES[name])
            steps = int(args.steps * fields.pop("step_scale", 1.0))
            size = dataclasses.replace(DemoSize(pretrain_steps=steps, pretrain_evals=1), **fields)
            demo = Demo(size, Path(tmp) / name, args.seed, progress=False)
            data = demo.read()
            tok = demo.train_tokenizer(data["corpus"])
            encoder = demo.pretrain(data["corpus"], tok)
            result = demo.results["pretraining"]
            rows.append({"recipe": name, "steps": steps, "seed": args.seed,
                         "heldout_mlm": round(result["mlm_accuracy"], 4), "seconds": result["seconds"]})
            print(rows[-1], flush=True)
            if args.finetune:
                for row in finetune_lifts(demo, encoder, tok, data, args.rates, args.threads):
                    lifts.append({"recipe": name if not args.rates else f"{name}, each encoder's best rate",
                                  "steps": steps, "seed": args.seed, **row})
                    print(lifts[-1], flush=True)
    out = Path(args.output)
    merge_csv(out / "demo-ablations.csv", rows, ("recipe", "steps", "seed"))
    if lifts:
        merge_csv(out / "demo-ablation-lifts.csv", lifts, ("recipe", "steps", "seed", "task", "size"))
    return 0


def finetune_lifts(demo: Demo, encoder, tok, data: dict, rates: list[float] | None, threads: int) -> list[dict]:
    """Fine-tune both tasks from `encoder` and from its random twin on the validation
    examples; one row per (task, size). With `rates`, every run is repeated at each rate,
    and each (task, size, encoder) keeps the rate with the best mean over the seeds. Picking
    on the set it reports on flatters both encoders alike."""
    splits = {"sentiment": (data["review_pool"], data["review_validation"]),
              "ner": (data["ner_pool"], data["ner_validation"])}
    demo_jobs = demo.finetune_jobs(encoder, tok, splits, local_attention=demo.size.local_attention or None)
    jobs = [dataclasses.replace(job, learning_rate=rate) for rate in rates for job in demo_jobs] if rates else demo_jobs
    runs = collections.defaultdict(list)  # (task, size, init, rate): a run per seed
    metrics = {}
    for job, (value, _) in zip(jobs, run_jobs(jobs, threads)):
        metrics[job.task] = job.metric
        runs[job.task, job.size, job.init, job.learning_rate].append(
            {"size": job.size, "seed": job.seed, "init": job.init, "steps": job.steps, job.metric: value})
    rows = []
    for task, metric in metrics.items():
        chosen, best = best_rate_runs({k[1:]: v for k, v in runs.items() if k[0] == task}, metric)
        for n, row in summarize(chosen, metric).items():
            rows.append({"task": task, "size": n, "pretrained": round(row["pretrained"]["mean"], 4),
                         "random": round(row["random"]["mean"], 4), "lift": round(row["lift"]["mean"], 4),
                         "lift_sd": round(row["lift"]["std"], 4),
                         "pretrained_rate": best[n, "pretrained"], "random_rate": best[n, "random"]})
    return rows


def best_rate_runs(runs: dict, metric: str) -> tuple[list[dict], dict]:
    """From {(size, init, rate): runs over the seeds}, the runs of each (size, init) at the rate
    with the best mean, and {(size, init): that rate}."""
    best = {}
    for n, init, rate in runs:
        mean = statistics.fmean(r[metric] for r in runs[n, init, rate])
        if (n, init) not in best or mean > best[n, init][1]:
            best[n, init] = (rate, mean)
    chosen = [r for (n, init), (rate, _) in best.items() for r in runs[n, init, rate]]
    return chosen, {key: rate for key, (rate, _) in best.items()}


def merge_csv(file: Path, rows: list[dict], key: tuple) -> None:
    """Write `rows` to `file`, keeping the rows already there whose `key` columns differ."""
    def ident(row):
        return tuple(str(row[k]) for k in key)
    new = {ident(r) for r in rows}
    old = list(csv.DictReader(io.StringIO(file.read_text()))) if file.exists() else []
    text = io.StringIO()
    columns = list(dict.fromkeys([*(old[0] if old else {}), *rows[0]]))  # older rows may lack newer columns
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([r for r in old if ident(r) not in new] + rows)
    write_text(file, text.getvalue())
    print(f"wrote {file}")


if __name__ == "__main__":
    sys.exit(main())
