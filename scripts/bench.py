"""Speed and scale benchmarks: audio embedding, search, training steps, long files, and the memory of each.

    python scripts/bench.py                                   # all four on this machine's CPU
    python scripts/bench.py --only search --sizes 10000,100000
    python scripts/bench.py --device cuda                     # on a GPU: adds bf16 and torch.compile rows
    python scripts/bench.py --only load --load-minutes 1,10,60,120   # crops and embedding of long files

What is measured and how: hybrid_retrieval.experiments.speed. Results go to stdout and to
--out (results/bench/bench.{md,json}).
"""
from __future__ import annotations

import sys

from hybrid_retrieval.experiments.speed import run_benchmarks

if __name__ == "__main__":
    sys.exit(run_benchmarks())
