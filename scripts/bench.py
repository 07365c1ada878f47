"""Speed and scale benchmarks: audio embedding, search, training steps, files to index, cold
text search, and the memory of each.

    python scripts/bench.py                                   # all five on this machine's CPU
    python scripts/bench.py --only search --sizes 10000,100000
    python scripts/bench.py --only catalogue,coldstart        # files to index vs the tower; cold search
    python scripts/bench.py --device cuda                     # on a GPU: adds bf16 and torch.compile rows

What is measured and how: hybrid_retrieval.experiments.speed. Results go to stdout and to
--out (results/bench/bench.{md,json}).
"""
from __future__ import annotations

import sys

from hybrid_retrieval.experiments.speed import run_benchmarks

if __name__ == "__main__":
    sys.exit(run_benchmarks())
