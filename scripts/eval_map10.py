"""Evaluate a checkpoint as DCASE 2024 task 8 does: mAP@10 and R@1/5/10, text -> audio.

    python scripts/eval_map10.py --checkpoint runs/3 --dataset clotho --root data/clotho --split evaluation
    python scripts/eval_map10.py --checkpoint runs/3 --dataset synthmusic --root data/synthmusic --split eval --json

Hybrid checkpoints fuse each item's metadata (of the kinds they were trained with).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from hybrid_retrieval.data.items import caption_pairs
from hybrid_retrieval.data.registry import DATASETS, load_split
from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.hub import check_writable
from hybrid_retrieval.report import markdown_table, random_baseline
from hybrid_retrieval.training.checkpoint import load_checkpoint
from hybrid_retrieval.training.loop import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its latest)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--split", required=True, help="split name or alias (e.g. evaluation, test, eval)")
    parser.add_argument("--cache-dir", default=None,
                        help="feature cache for frozen pretrained towers (e.g. .cache/features)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)  # before any work
    model, _ = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    items = load_split(args.dataset, args.root, args.split)
    cache = args.cache_dir if model.cache_is_valid else None
    metrics = evaluate(model, items, cache, progress=not args.json)
    owners, _ = caption_pairs(items)
    baseline = random_baseline(len(items), owners)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split,
                          "n_items": len(items), "n_queries": len(owners), **metrics, "random": baseline}))
    else:
        print(f"{args.dataset}/{args.split}: {len(items)} clips, {len(owners)} caption queries")
        print(markdown_table({"model (text->audio)": metrics["text_to_audio"],
                              "model (audio->text)": metrics["audio_to_text"], "random": baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
