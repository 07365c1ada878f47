"""Evaluate a checkpoint as DCASE 2024 task 8 does: mAP@10 and R@1/5/10, text -> audio; with
--relevance also as DCASE 2025 task 6 does: mAP@16 with several relevant clips per query.

    python scripts/eval_map10.py --checkpoint runs/3 --dataset clotho --root data/clotho --split evaluation
    python scripts/eval_map10.py --checkpoint runs/3 --dataset synthmusic --root data/synthmusic --split eval --json
    python scripts/eval_map10.py --checkpoint audioset_tags --dataset clotho --root data/clotho --split evaluation
    python scripts/eval_map10.py --checkpoint runs/3 --dataset clotho --root data/clotho --split evaluation \
        --relevance data/clotho/retrieval_audio_metadata_eval.csv

Hybrid checkpoints fuse each item's metadata (of the kinds they were trained with). The
relevance file is the organisers' CSV (query,audio_filenames); its queries must be captions of
the split and its file names clips of the split.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from hybrid_retrieval.data.items import caption_pairs
from hybrid_retrieval.data.registry import DATASETS, load_split
from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.evaluation import RELEVANCE_MAP_KS, evaluate
from hybrid_retrieval.hub import check_writable
from hybrid_retrieval.metrics import read_relevance_csv
from hybrid_retrieval.models import load_retrieval_model
from hybrid_retrieval.report import markdown_table, random_baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint or run directory (its latest), a released checkpoint, audioset_tags "
                             "(training-free) or a Hugging Face Hub id")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--split", required=True, help="split name or alias (e.g. evaluation, test, eval)")
    parser.add_argument("--cache-dir", default=None,
                        help="feature cache for frozen pretrained towers (e.g. .cache/features)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--relevance", default=None,
                        help="DCASE 2025 relevance CSV (query,audio_filenames): adds mAP@16 with all matching clips")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)  # before any work
    relevance = read_relevance_csv(args.relevance) if args.relevance else None
    model, _ = load_retrieval_model(args.checkpoint, args.device)
    items = load_split(args.dataset, args.root, args.split)
    cache = args.cache_dir if model.cache_is_valid else None
    metrics = evaluate(model, items, cache, progress=not args.json, relevance=relevance)
    owners, _ = caption_pairs(items)
    baseline = random_baseline(len(items), owners)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split,
                          "n_items": len(items), "n_queries": len(owners), **metrics, "random": baseline}))
    else:
        print(f"{args.dataset}/{args.split}: {len(items)} clips, {len(owners)} caption queries")
        print(markdown_table({"model (text->audio)": metrics["text_to_audio"],
                              "model (audio->text)": metrics["audio_to_text"], "random": baseline}))
        if relevance is not None:
            scores = metrics["relevance"]
            print(f"\nDCASE 2025, text->audio: {scores['queries']} queries of {args.relevance} with all their "
                  f"matching clips")
            columns = [f"mAP@{k}" for k in RELEVANCE_MAP_KS] + ["R@1", "R@5", "R@10"]
            print(markdown_table({f"original: each of the {len(owners)} captions, its own clip": scores["single"],
                                  "extra annotations: all matching clips": scores["multi"]}, columns))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
