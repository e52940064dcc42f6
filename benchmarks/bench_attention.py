"""Attention sweep (packed varlen vs padded PyTorch): the code is bertcore.bench.attention;
this script runs it from a checkout and writes into benchmarks/results/<device>/.

    python benchmarks/bench_attention.py [--quick] [--threads N] [--output DIR] [--help]
"""
import sys
from pathlib import Path

from bertcore.bench.attention import main

if __name__ == "__main__":
    sys.exit(main(default_output=Path(__file__).resolve().parent / "results"))
