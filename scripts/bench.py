"""Speed and scale benchmarks: audio and text embedding, search, training steps, long files, files
to index, cold text search, and the memory of each.

    python scripts/bench.py                                   # all of them on this machine's CPU
    python scripts/bench.py --only embed,text --efficientat-repo DIR   # beside the original EfficientAT
    python scripts/bench.py --only search --sizes 10000,100000
    python scripts/bench.py --only catalogue,coldstart        # files to index vs the tower; cold search
    python scripts/bench.py --only load --load-minutes 1,10,60,120   # crops and embedding of long files
    python scripts/bench.py --device cuda                     # on a GPU: adds a torch.compile row


What is measured and how: hybrid_retrieval.experiments.speed. Results go to stdout and to
--out (results/bench/bench.{md,json}).
"""
from __future__ import annotations

import sys

from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.experiments.speed import run_benchmarks

if __name__ == "__main__":
    sys.exit(run_reporting_errors(run_benchmarks))
