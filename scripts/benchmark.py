"""The hybrid-retrieval comparison table (Primus & Widmer, EUSIPCO 2024) on one dataset.

    python scripts/benchmark.py --dataset synthmusic                      # 1 seed, CPU-sized
    python scripts/benchmark.py --dataset synthmusic --seeds 3
    python scripts/benchmark.py --dataset clotho --root /data/clotho --seeds 3   # GPU machine

The rows and how they are run: hybrid_retrieval.experiments.retrieval_table. Writes table.md and
table.json to --out.
"""
from __future__ import annotations

import argparse
import logging
import sys

from hybrid_retrieval.data.registry import DATASETS
from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.experiments.retrieval_table import ROW_NAMES, run_table, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthmusic", choices=list(DATASETS))
    parser.add_argument("--root", default=None, help="dataset root (default: the dataset config's data_root)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="override the dataset config's epochs")
    parser.add_argument("--out", default=None, help="output folder (default: results/<dataset>)")
    parser.add_argument("--runs", default=None, help="where row checkpoints go (default: runs/benchmark/<dataset>)")
    parser.add_argument("--rows", default=None,
                        help=f"comma-separated row configs to run (default: all of {','.join(ROW_NAMES)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = args.rows.split(",") if args.rows else None
    result = run_table(args.dataset, args.root, args.seeds, args.epochs, rows, args.runs, command)
    write_table(result, args.out or f"results/{args.dataset}")
    print()
    print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
