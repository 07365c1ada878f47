#!/usr/bin/env python
"""Generate the SynthMusic benchmark (Clotho v2 layout) offline: see hybrid_retrieval.data.synthmusic.

Example: python scripts/make_synthmusic.py --out data/synthmusic --seed 0
"""
from __future__ import annotations

import argparse
import logging
import sys

from hybrid_retrieval.data.synthmusic import build_synthmusic
from hybrid_retrieval.errors import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1200, help="clips in the development split")
    parser.add_argument("--n-val", type=int, default=200, help="clips in the validation split")
    parser.add_argument("--n-eval", type=int, default=300, help="clips in the evaluation split")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = build_synthmusic(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval,
                              seconds=args.seconds, workers=args.workers, progress=not args.no_progress)
    if report.cached:
        print(f"{report.out_dir}: already complete, nothing to do")
    else:
        print(f"{report.out_dir}: rendered {report.rendered} clips, reused {report.reused}, "
              f"{report.seconds_elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
