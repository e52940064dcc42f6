"""Encoder benchmark (bertcore.BertEncoder vs transformers.BertModel): the code is bertcore.bench.encoder;
this script runs it from a checkout and writes into benchmarks/results/<device>/.

    python benchmarks/bench_encoder.py [--quick] [--threads N] [--output DIR] [--help]
"""
import sys
from pathlib import Path

from bertcore.bench.encoder import main

if __name__ == "__main__":
    sys.exit(main(default_output=Path(__file__).resolve().parent / "results"))
