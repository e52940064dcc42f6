"""LayerNorm sweep (LN(dropout(x) + residual)): the code is bertcore.bench.layer_norm;
this script runs it from a checkout and writes into benchmarks/results/<device>/.

    python benchmarks/bench_layer_norm.py [--quick] [--threads N] [--output DIR] [--help]
"""
import sys
from pathlib import Path

from bertcore.bench.layer_norm import main

if __name__ == "__main__":
    sys.exit(main(default_output=Path(__file__).resolve().parent / "results"))
