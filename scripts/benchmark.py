"""The hybrid-retrieval comparison table (Primus & Widmer, EUSIPCO 2024) on one dataset.

    python scripts/benchmark.py --dataset synthmusic                      # 1 seed, CPU-sized
    python scripts/benchmark.py --dataset synthmusic --seeds 3
    python scripts/benchmark.py --dataset clotho --root /data/clotho --seeds 3   # GPU machine

Rows: random, metadata-only (the keyword baseline: queries against OS metadata alone),
content-only, late and mid fusion with CS, OS, FS and CS+OS metadata, and the best hybrid row
again with a separate metadata encoder (the best row where that choice changes the model: with
frozen towers, only the fusions that reuse the query text projection). Each row is a named config of configs/ combined with
the dataset's config, so `python scripts/train.py with <dataset> <row>` trains the same model.
Models are trained on the train split, validated on the validation split and scored on the
evaluation split; columns are mean ± std over seeds. Rows whose metadata kinds the dataset
lacks are reported as n/a. Writes table.md and table.json to --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml

from fusion import FUSIONS
from hybrid_retrieval.data.items import caption_pairs
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.report import METRIC_COLUMNS, markdown_table, random_baseline
from hybrid_retrieval.training.checkpoint import load_checkpoint
from hybrid_retrieval.training.config import split_config
from hybrid_retrieval.training.loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
log = logging.getLogger("hybrid_retrieval")

# (row label, named configs of the row); the separate-encoder row is added after the others
ROWS = [
    ("metadata-only (OS)", ["metadata_only"]),
    ("content-only", ["content_only"]),
    *[(f"{fusion} fusion, {label}", [f"{fusion}_{name}"])
      for fusion in ("late", "mid")
      for label, name in (("CS", "cs"), ("OS", "os"), ("FS", "fs"), ("CS+OS", "cs_os"))],
]


def named_config(name: str) -> dict:
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no named config {name!r} ({path})")
    return yaml.safe_load(path.read_text()) or {}


def merge(*configs: dict) -> dict:
    """Later configs win; the nested `fusion_options` is merged per fusion mode."""
    out: dict = {}
    for config in configs:
        for key, value in config.items():
            if key == "fusion_options":
                merged = dict(out.get(key, {}))
                for mode, options in value.items():
                    merged[mode] = {**merged.get(mode, {}), **options}
                out[key] = merged
            else:
                out[key] = value
    return out


def row_metadata_kinds(names: list[str]) -> str:
    return merge(*(named_config(n) for n in names)).get("metadata", "") or ""


def run_row(dataset: str, names: list[str], seed: int, overrides: dict, run_dir: Path, eval_items) -> dict:
    flat = merge(named_config(dataset), *(named_config(n) for n in names), overrides, {"seed": seed})
    model_config, train_config = split_config(flat)
    result = train(model_config, train_config, run_dir)
    model, saved = load_checkpoint(result["checkpoint"])
    cache = train_config.cache_dir if len(saved["frozen_towers"]) == 2 else None
    return evaluate(model, eval_items, cache, progress=False)["text_to_audio"]


def summarise(per_seed: list[dict]) -> dict:
    """Mean ± sample std over seeds (the mean alone for one seed)."""
    out = {}
    for column in METRIC_COLUMNS:
        values = [m[column] for m in per_seed]
        mean = f"{statistics.mean(values):.4f}"
        out[column] = f"{mean} ± {statistics.stdev(values):.4f}" if len(values) > 1 else mean
    return out


def encoder_choice_matters(names: list[str], settings: dict) -> bool:
    """Whether a separate metadata encoder changes this row's model: with a trainable text tower
    always; with a frozen one only where the fusion projects metadata with the query projection
    (late, metadata-only); mid fusion then has no shared trainable part, so both are identical."""
    fusion_name = merge(*(named_config(n) for n in names))["fusion"]
    return not settings.get("freeze_text", True) or FUSIONS[fusion_name].uses_text_projection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthmusic", choices=("synthmusic", "clotho", "audiocaps"))
    parser.add_argument("--root", default=None, help="dataset root (default: the dataset config's data_root)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="override the dataset config's epochs")
    parser.add_argument("--out", default=None, help="output folder (default: results/<dataset>)")
    parser.add_argument("--runs", default=None, help="where row checkpoints go (default: runs/benchmark/<dataset>)")
    parser.add_argument("--rows", default=None,
                        help="comma-separated row configs to run (e.g. content_only,late_os; default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    dataset_config = named_config(args.dataset)
    overrides: dict = {"progress": False, "eval_every": 0}
    if args.root:
        overrides["data_root"] = args.root
    if args.epochs:
        overrides["epochs"] = args.epochs
    settings = merge(dataset_config, overrides)
    out = Path(args.out or f"results/{args.dataset}")
    runs = Path(args.runs or f"runs/benchmark/{args.dataset}")
    seeds = list(range(args.seeds))
    eval_items = load_split(settings["dataset"], settings["data_root"], settings.get("eval_split", "eval"))
    available = {kind for item in eval_items for kind, value in item.metadata.items() if value}
    owners, _ = caption_pairs(eval_items)

    results: dict[str, dict] = {"random": {"per_seed": [random_baseline(len(eval_items), owners, s) for s in seeds]}}
    print(f"{args.dataset}: {len(eval_items)} evaluation clips, {len(owners)} caption queries; "
          f"metadata kinds present: {sorted(available) or 'none'}")

    def run(label: str, names: list[str], extra: dict | None = None) -> None:
        kinds = row_metadata_kinds(names)
        missing = [k for k in kinds.split("+") if k and k not in available]
        if missing:
            results[label] = {"configs": names, "skipped": f"the dataset has no {'/'.join(missing)} metadata"}
            print(f"{label:32s} n/a ({results[label]['skipped']})")
            return
        started = time.perf_counter()
        per_seed = [run_row(args.dataset, names, s, {**overrides, **(extra or {})},
                            runs / "_".join(names + (["separate"] if extra else [])) / f"seed{s}", eval_items)
                    for s in seeds]
        results[label] = {"configs": names + (["separate_encoder"] if extra else []), "per_seed": per_seed,
                          "seconds": round(time.perf_counter() - started, 1)}
        print(f"{label:32s} mAP@10 {statistics.mean(m['mAP@10'] for m in per_seed):.4f}  "
              f"({results[label]['seconds']:.0f} s)", flush=True)

    selected = set(args.rows.split(",")) if args.rows else None
    unknown = selected - {names[0] for _, names in ROWS} if selected else set()
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; rows: {[names[0] for _, names in ROWS]}")
    for label, names in ROWS:
        if selected is None or names[0] in selected:
            run(label, names)
    hybrids = [(label, names) for label, names in ROWS if names[0].startswith(("late", "mid"))
               and "per_seed" in results.get(label, {}) and encoder_choice_matters(names, settings)]
    if hybrids:
        best_label, best_names = max(hybrids, key=lambda r: statistics.mean(m["mAP@10"] for m in results[r[0]]["per_seed"]))
        run(f"{best_label}, separate encoder", best_names, {"separate_metadata_encoder": True})

    table = {label: (summarise(r["per_seed"]) if "per_seed" in r else {c: "n/a" for c in METRIC_COLUMNS})
             for label, r in results.items()}
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"{args.dataset}, evaluation split ({len(eval_items)} clips, {len(owners)} queries), "
              f"{len(seeds)} seed(s), mean ± std. Command: `{command.strip()}`; machine: {platform.machine()}, "
              f"{torch.get_num_threads()} CPU threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
              f"date: {date.today().isoformat()}.")
    markdown = header + "\n\n" + markdown_table(table, first="system")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown + "\n")
    (out / "table.json").write_text(json.dumps({"header": header, "rows": results}, indent=1))
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
