"""The full-scale dry run of the fine-tuning data path on a generated Clotho-sized split.

    python scripts/dryrun.py                                   # clotho config, 3,839 clips (~8 GB, deleted after)
    python scripts/dryrun.py --clips 200 --step-batch-sizes 1  # a quicker look

What is generated and measured: hybrid_retrieval.experiments.dryrun. Results go to stdout and to
--out (results/dryrun/dryrun.{md,json}).
"""
from __future__ import annotations

import sys

from hybrid_retrieval.experiments.dryrun import run_dryrun

if __name__ == "__main__":
    sys.exit(run_dryrun())
