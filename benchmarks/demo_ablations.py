"""The demo's pretraining recipes side by side (docs/demo/README.md): held-out MLM accuracy
(15% masked, test text) after pretraining, and with --finetune the lift each gives
sentiment and NER, measured on validation examples (set aside from the pools, `Demo.read`), never
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
import sys
import tempfile
from pathlib import Path

import torch

from bertcore.demo import Demo, DemoSize, best_rate_runs, run_jobs, summarize
from bertcore.files import write_text

# Recipes keep the demo they were measured on, so that each name reruns its rows in the
# CSVs: the demo fine-tuned NER at one rate until it chose each encoder's rate on
# validation (`ONE_NER_RATE`), and had two heads, both starting local, until it had four
# (`TWO_HEADS`); both kept 400 test reviews out of pretraining, where the demo now keeps 2000.
# Every recipe before the contrastive review spans pretrained with MLM + NSP alone (`MLM_NSP_ONLY`);
# the first demo with them had them in a second phase (`SECOND_PHASE`, rerun with --steps 4000).
MLM_NSP_ONLY = {"contrastive_steps": 0, "contrastive_mixed": False}
SECOND_PHASE = {"contrastive_steps": 1400, "contrastive_mixed": False}
ONE_NER_RATE = {**MLM_NSP_ONLY, "ner_rates": (4e-3,), "test_reviews": 400}
TWO_HEADS = {**ONE_NER_RATE, "heads": 2}
RECIPES = {  # name: DemoSize fields that differ from the demo's own
    "mixed-spans": {},                      # the demo: contrastive review spans mixed into MLM + NSP
    "contrastive-spans": SECOND_PHASE,      # MLM + NSP, then a second phase taking turns with the spans
    "local": MLM_NSP_ONLY,                  # the demo before the spans (run with --steps 5000)
    "spans-lr-1e-3": {**SECOND_PHASE, "contrastive_lr": 1e-3},
    "spans-1000-steps": {**SECOND_PHASE, "contrastive_steps": 1000},
    "one-ner-rate": ONE_NER_RATE,
    "two-heads": TWO_HEADS,                 # the demo before four heads
    "bert-init": {**TWO_HEADS, "local_attention": ()},
    "local-lr-1e-3": {**TWO_HEADS, "pretrain_lr": 1e-3},
    # twice the pairs per step, 1700 steps (~35% more time than the demo's 2500)
    "local-batch-64": {**TWO_HEADS, "pretrain_batch": 64, "pretrain_lr": 2.8e-3, "step_scale": 0.68},
    "local-4-heads": {**ONE_NER_RATE, "local_attention": (-2, -1, 1, 2)},
    "local-2-of-8-heads": {**ONE_NER_RATE, "heads": 8},
    "local-4-of-8-heads": {**ONE_NER_RATE, "heads": 8, "local_attention": (-2, -1, 1, 2)},
    "length-64": {**ONE_NER_RATE, "max_length": 64, "pretrain_batch": 16},   # the same characters per step
    "cls-sentiment": {**ONE_NER_RATE, "sentiment_pooling": "cls"},
    "finetune-no-dropout": {**ONE_NER_RATE, "finetune_dropout": 0.0},
    "bert-init-vocab-6000": {**TWO_HEADS, "local_attention": (), "vocab": 6000},
    "whole-word": {**TWO_HEADS, "whole_word": True},     # People's Daily's words masked whole (BERT-wwm)
    # where the lift comes from: the reviews alone (no news text), and a control with
    # every document's characters shuffled (the same characters, no order)
    "reviews-only": {**ONE_NER_RATE, "corpus_paragraphs": 0},
    "shuffled-chars": {**ONE_NER_RATE, "shuffle_corpus": True},
    "two-heads-reviews-only": {**TWO_HEADS, "corpus_paragraphs": 0},
    "two-heads-shuffled-chars": {**TWO_HEADS, "shuffle_corpus": True},
    # the demo's pretraining, fine-tuned differently (both encoders alike)
    "finetune-lr-1e-3": {**TWO_HEADS, "sentiment_rates": (1e-3,), "ner_rates": (1e-3,)},
    "finetune-lr-8e-3": {**TWO_HEADS, "sentiment_rates": (8e-3,), "ner_rates": (8e-3,)},
    "frozen-encoder": {**TWO_HEADS, "freeze_encoder": True, "sentiment_rates": (1e-2,), "ner_rates": (1e-2,)},
    "finetune-300-steps": {**TWO_HEADS, "finetune_steps": 300},
    # the demo's pretraining; at 3000 examples, 150 steps of 16 see 2400: one or two passes instead
    "one-epoch": {"finetune_min_epochs": 1.0},
    "two-epochs": {"finetune_min_epochs": 2.0},
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
            encoder = demo.pretrain(data["corpus"], data["reviews"], tok)
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
    examples; one row per (task, size). Each (task, size, encoder) keeps its best rate out
    of the demo's rates, or out of `rates` for both tasks. Picking on the set it reports
    on flatters both encoders alike."""
    size = demo.size.with_rates(rates) if rates else demo.size
    splits = {"sentiment": (data["review_pool"], data["review_validation"], None),
              "ner": (data["ner_pool"], data["ner_validation"], None)}
    jobs = Demo(size, demo.out, demo.seed, progress=False).finetune_jobs(
        encoder, tok, splits, local_attention=size.local_attention or None)
    runs, metrics = collections.defaultdict(list), {}
    for job, (value, _, seconds) in zip(jobs, run_jobs(jobs, threads)):
        metrics[job.task] = job.metric
        runs[job.task].append(job.record(value, value, seconds))  # its test set is the validation examples
    rows = []
    for task, metric in metrics.items():
        for n, row in summarize(best_rate_runs(runs[task]), metric).items():
            rows.append({"task": task, "size": n, "pretrained": round(row["pretrained"]["mean"], 4),
                         "random": round(row["random"]["mean"], 4), "lift": round(row["lift"]["mean"], 4),
                         "lift_sd": round(row["lift"]["std"], 4),
                         "pretrained_rate": row["pretrained"]["rate"], "random_rate": row["random"]["rate"]})
    return rows


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
