"""The demo's pretraining recipes side by side (README, "The demo": why the heads start
local): held-out MLM accuracy (15% masked, test text) after the same number of steps,
one recipe after another, each in its own output folder.

    python benchmarks/demo_ablations.py [--steps 1500] [--threads 1] [--seed 0] [RECIPE ...]

Writes benchmarks/results/amd-epyc-2-cores/demo-ablations.csv (recipe, steps, held-out MLM, seconds).
"""
import argparse
import csv
import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import torch

from bertcore.demo import Demo, DemoSize
from bertcore.files import write_text

RECIPES = {  # name: DemoSize fields that differ from the demo's own
    "bert-init": {"local_attention": ()},
    "local": {},
    "local-4-heads": {"heads": 4, "local_attention": (-2, -1, 1, 2)},
    "local-2-of-4-heads": {"heads": 4},
    "bert-init-vocab-6000": {"local_attention": (), "vocab": 6000},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "amd-epyc-2-cores"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            size = dataclasses.replace(DemoSize(pretrain_steps=args.steps, pretrain_evals=1), **RECIPES[name])
            demo = Demo(size, Path(tmp) / name, args.seed, progress=False)
            corpus = demo.read()["corpus"]
            demo.pretrain(corpus, demo.train_tokenizer(corpus))
            result = demo.results["pretraining"]
            rows.append({"recipe": name, "steps": args.steps, "heldout_mlm": round(result["mlm_accuracy"], 4),
                         "seconds": result["seconds"]})
            print(rows[-1], flush=True)
    out = Path(args.output) / "demo-ablations.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, text.getvalue())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
