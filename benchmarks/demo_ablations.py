"""The demo's pretraining recipes side by side (README, "The demo"): held-out MLM accuracy
(15% masked, test text) after pretraining, and with --finetune the lift each gives
sentiment and NER, measured on validation examples (the pools' tails, `Demo.read`), never
on the demo's test sets.

    python benchmarks/demo_ablations.py [--steps N] [--threads 1] [--seed 42] [--finetune] [RECIPE ...]

Writes benchmarks/results/amd-epyc-2-cores/demo-ablations.csv (recipe, steps, held-out MLM,
seconds) and, with --finetune, demo-ablation-lifts.csv (recipe, steps, task, size,
pretrained, random, lift): rows of earlier runs with another recipe, step count or seed stay.
"""
import argparse
import csv
import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import torch

from bertcore.demo import Demo, DemoSize, run_jobs, summarize
from bertcore.files import write_text

RECIPES = {  # name: DemoSize fields that differ from the demo's own
    "bert-init": {"local_attention": ()},
    "local": {},
    "local-lr-1e-3": {"pretrain_lr": 1e-3},
    # twice the pairs per step, 1700 steps (~35% more time than the demo's 2500)
    "local-batch-64": {"pretrain_batch": 64, "pretrain_lr": 2.8e-3, "step_scale": 0.68},
    "local-4-heads": {"heads": 4, "local_attention": (-2, -1, 1, 2)},
    "local-2-of-4-heads": {"heads": 4},
    "bert-init-vocab-6000": {"local_attention": (), "vocab": 6000},
    "whole-word": {"whole_word": True},     # People's Daily's words masked whole (BERT-wwm)
    # the demo's pretraining, fine-tuned differently (both encoders alike)
    "finetune-lr-1e-3": {"sentiment_lr": 1e-3, "ner_lr": 1e-3},
    "finetune-lr-8e-3": {"sentiment_lr": 8e-3, "ner_lr": 8e-3},
    "frozen-encoder": {"freeze_encoder": True, "sentiment_lr": 1e-2, "ner_lr": 1e-2},
    "finetune-300-steps": {"finetune_steps": 300},
    # bigger encoders than the demo's budget allows: how much lift more pretraining compute buys
    "two-layers": {"layers": 2, "pretrain_lr": 1e-3},
    "wide-256": {"hidden": 256, "intermediate": 1024, "pretrain_lr": 1e-3},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE")
    p.add_argument("--steps", type=int, default=DemoSize.pretrain_steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune both tasks at the demo's sizes and seeds, scored on validation examples")
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
                splits = {"sentiment": (data["review_pool"], data["review_validation"]),
                          "ner": (data["ner_pool"], data["ner_validation"])}
                jobs = demo.finetune_jobs(encoder, tok, splits, local_attention=size.local_attention or None)
                values = list(run_jobs(jobs, args.threads))
                for task in splits:
                    metric = next(j.metric for j in jobs if j.task == task)
                    runs = [{"size": j.size, "seed": j.seed, "init": j.init, "steps": j.steps, metric: v}
                            for j, (v, _) in zip(jobs, values) if j.task == task]
                    for n, row in summarize(runs, metric).items():
                        lifts.append({"recipe": name, "steps": steps, "seed": args.seed, "task": task, "size": n,
                                      "pretrained": round(row["pretrained"]["mean"], 4),
                                      "random": round(row["random"]["mean"], 4),
                                      "lift": round(row["lift"]["mean"], 4), "lift_sd": round(row["lift"]["std"], 4)})
                        print(lifts[-1], flush=True)
    out = Path(args.output)
    merge_csv(out / "demo-ablations.csv", rows, ("recipe", "steps", "seed"))
    if lifts:
        merge_csv(out / "demo-ablation-lifts.csv", lifts, ("recipe", "steps", "seed", "task", "size"))
    return 0


def merge_csv(file: Path, rows: list[dict], key: tuple) -> None:
    """Write `rows` to `file`, keeping the rows already there whose `key` columns differ."""
    def ident(row):
        return tuple(str(row[k]) for k in key)
    new = {ident(r) for r in rows}
    old = list(csv.DictReader(io.StringIO(file.read_text()))) if file.exists() else []
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([r for r in old if ident(r) not in new] + rows)
    write_text(file, text.getvalue())
    print(f"wrote {file}")


if __name__ == "__main__":
    sys.exit(main())
