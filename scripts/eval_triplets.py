"""The disentanglement table: triplet accuracy per condition on SynthMusic's evaluation split.

    python scripts/eval_triplets.py                                  # default data, 1 seed (~1.5 min on 2 CPU cores)
    python scripts/eval_triplets.py --seeds 3 --out results/disentangled
    python scripts/eval_triplets.py --set track_weight=0.5 --configs csn_track csn

Rows are the named configs of configs/disentangled/ (see hybrid_retrieval.disentangled.benchmark),
each trained on the development split; columns are the conditions and their mean. With several
seeds, cells are mean ± std. With --out, table.md and table.json are written there, and the
models of the first seed are saved to OUT/CONFIG (usable as `similar --checkpoint OUT/CONFIG`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from hybrid_retrieval.disentangled.benchmark import CSN_ROWS, mean_over_seeds, run_triplet_benchmark, triplet_table
from hybrid_retrieval.disentangled.evaluation import DEFAULT_TRIPLETS
from hybrid_retrieval.errors import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthmusic", help="SynthMusic root (default data/synthmusic)")
    parser.add_argument("--cache-dir", default=".cache/features", help="feature cache (default .cache/features)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--triplets", type=int, default=DEFAULT_TRIPLETS,
                        help=f"held-out triplets per condition (default {DEFAULT_TRIPLETS})")
    parser.add_argument("--configs", nargs="+", default=list(CSN_ROWS), help=f"rows (default: {' '.join(CSN_ROWS)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every row (YAML value), e.g. epochs=20")
    parser.add_argument("--out", default=None, help="folder for table.md, table.json and the first seed's models")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    started = time.perf_counter()
    results = [run_triplet_benchmark(args.data_root, args.cache_dir, seed=seed, configs=tuple(args.configs),
                                     n_triplets=args.triplets, overrides=overrides,
                                     out_dir=args.out if seed == 0 else None)
               for seed in range(args.seeds)]
    result = mean_over_seeds(results) if args.seeds > 1 else results[0]
    total = time.perf_counter() - started
    table = triplet_table(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table + "\n")
        (out / "table.json").write_text(json.dumps({**result, "seconds_total": total}, indent=1))
    if args.json:
        print(json.dumps({**result, "seconds_total": total}))
    else:
        print(f"Triplet accuracy (%) on {args.data_root} {result['eval_split']} ({result['n_eval_tracks']} tracks, "
              f"{args.triplets} triplets per condition, seeds {args.seeds}, overrides {overrides or 'none'})\n")
        print(table)
        train = {k: round(v) for k, v in results[0]["seconds"]["train"].items()}
        print(f"\ntime: {total:.0f} s in all; seed 0: features "
              f"{results[0]['seconds']['features']:.0f} s, training {train} s, "
              f"evaluation {results[0]['seconds']['evaluate']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
