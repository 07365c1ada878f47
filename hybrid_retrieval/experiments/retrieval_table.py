"""The hybrid-retrieval comparison table (Primus & Widmer, EUSIPCO 2024) on one dataset.

Rows: random, training-free (the `audioset_tags` model: the pretrained towers alone, see
`fusion/audioset_tags.py`), metadata-only (the keyword baseline: queries against OS metadata alone),
content-only, late and mid fusion with CS, OS, FS and CS+OS metadata, and the best hybrid row
again with a separate metadata encoder (the best row where that choice changes the model: with
frozen towers, only the fusions that reuse the query text projection). Each row is a named config
combined with the dataset's named config, so `python scripts/train.py with <dataset> <row>`
trains the same model. Models are trained on the train split, validated on the validation split
and scored on the evaluation split; columns are mean ± std over seeds. Rows whose metadata kinds
the dataset lacks are reported as n/a.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.experiments.config import compose
from hybrid_retrieval.report import METRIC_COLUMNS, markdown_table, random_baseline
from hybrid_retrieval.training.checkpoint import load_checkpoint
from hybrid_retrieval.training.config import split_config
from hybrid_retrieval.training.loop import train

log = logging.getLogger("hybrid_retrieval")

# (row label, named configs of the row); the separate-encoder row is added after the others
ROWS = [
    ("metadata-only (OS)", ["metadata_only"]),
    ("content-only", ["content_only"]),
    *[(f"{fusion} fusion, {label}", [f"{fusion}_{name}"])
      for fusion in ("late", "mid")
      for label, name in (("CS", "cs"), ("OS", "os"), ("FS", "fs"), ("CS+OS", "cs_os"))],
]
TRAINING_FREE_ROW = ("training-free (AudioSet tags)", "audioset_tags")  # (label, model name): no training
ROW_NAMES = [TRAINING_FREE_ROW[1]] + [names[0] for _, names in ROWS]


def row_metadata_kinds(names: list[str]) -> str:
    return compose(names).get("metadata", "") or ""


def run_row(dataset: str, names: list[str], seed: int, overrides: dict, run_dir: Path,
            eval_items: list[CatalogueItem]) -> dict:
    """Train one row's model for one seed and score it on `eval_items` (text -> audio metrics)."""
    model_config, train_config = split_config(compose([dataset, *names], {**overrides, "seed": seed}))
    result = train(model_config, train_config, run_dir)
    model, _ = load_checkpoint(result["checkpoint"])
    cache = train_config.cache_dir if model.cache_is_valid else None
    return evaluate(model, eval_items, cache, progress=False)["text_to_audio"]


def training_free_row(name: str, eval_items: list[CatalogueItem], cache_dir: str | None) -> dict:
    """Text -> audio metrics of a training-free model (`models.TRAINING_FREE`) on `eval_items`."""
    from hybrid_retrieval.models import load_retrieval_model

    model, _ = load_retrieval_model(name)
    return evaluate(model, eval_items, cache_dir, progress=False)["text_to_audio"]


def best_hybrid_run(table_json: str | Path) -> tuple[str, Path]:
    """(label, run folder of seed 0) of the hybrid row (late or mid fusion) with the best mean
    mAP@10 in a `table.json` that `write_table` wrote."""
    rows = json.loads(Path(table_json).read_text())["rows"]
    hybrids = {label: row for label, row in rows.items()
               if "per_seed" in row and "runs" in row and row["configs"][0].startswith(("late", "mid"))}
    if not hybrids:
        raise BadInputError(f"{table_json} has no hybrid row with its runs folder (run scripts/benchmark.py)")
    label = max(hybrids, key=lambda name: statistics.mean(m["mAP@10"] for m in hybrids[name]["per_seed"]))
    return label, Path(hybrids[label]["runs"]) / "seed0"


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
    from fusion import FUSIONS  # only the model factory imports fusion when a module loads

    return not settings.get("freeze_text", True) or FUSIONS[compose(names)["fusion"]].uses_text_projection


@dataclass
class TableResult:
    rows: dict[str, dict]  # label -> {"configs", "per_seed"/"skipped", "seconds"}
    markdown: str  # header line + table


def run_table(dataset: str, root: str | None = None, seeds: int = 1, epochs: int | None = None,
              rows: Sequence[str] | None = None, runs: str | Path | None = None,
              command: str = "") -> TableResult:
    """Train and score the rows (all, or the named configs in `rows`) for seeds 0..seeds-1.

    root / epochs override the dataset config's data_root / epochs; runs: where row checkpoints
    go (default runs/benchmark/<dataset>); command: how the table was made, for its header.
    Prints one line per row as it finishes.
    """
    unknown = sorted(set(rows or ()) - set(ROW_NAMES))
    if unknown:
        raise BadInputError(f"unknown rows {unknown}; rows: {ROW_NAMES}")
    overrides: dict = {"progress": False, "eval_every": 0}
    if root:
        overrides["data_root"] = root
    if epochs:
        overrides["epochs"] = epochs
    settings = compose([dataset], overrides)
    runs = Path(runs or f"runs/benchmark/{dataset}")
    seed_list = list(range(seeds))
    eval_items = load_split(settings["dataset"], settings["data_root"], settings.get("eval_split", "eval"))
    available = {kind for item in eval_items for kind, value in item.metadata.items() if value}
    owners, _ = caption_pairs(eval_items)

    results: dict[str, dict] = {"random": {"per_seed": [random_baseline(len(eval_items), owners, s)
                                                        for s in seed_list]}}
    print(f"{dataset}: {len(eval_items)} evaluation clips, {len(owners)} caption queries; "
          f"metadata kinds present: {sorted(available) or 'none'}")
    if rows is None or TRAINING_FREE_ROW[1] in rows:
        label, name = TRAINING_FREE_ROW
        started = time.perf_counter()
        metrics = training_free_row(name, eval_items, split_config(settings)[1].cache_dir)
        results[label] = {"configs": [name], "per_seed": [metrics] * len(seed_list),
                          "seconds": round(time.perf_counter() - started, 1)}
        print(f"{label:32s} mAP@10 {metrics['mAP@10']:.4f}  ({results[label]['seconds']:.0f} s; no training: "
              f"the same for every seed)", flush=True)

    def run(label: str, names: list[str], extra: dict | None = None) -> None:
        missing = [k for k in row_metadata_kinds(names).split("+") if k and k not in available]
        if missing:
            results[label] = {"configs": names, "skipped": f"the dataset has no {'/'.join(missing)} metadata"}
            print(f"{label:32s} n/a ({results[label]['skipped']})")
            return
        started = time.perf_counter()
        folder = runs / "_".join(names + (["separate"] if extra else []))
        per_seed = [run_row(dataset, names, s, {**overrides, **(extra or {})}, folder / f"seed{s}", eval_items)
                    for s in seed_list]
        results[label] = {"configs": names + (["separate_encoder"] if extra else []), "per_seed": per_seed,
                          "seconds": round(time.perf_counter() - started, 1), "runs": str(folder)}
        print(f"{label:32s} mAP@10 {statistics.mean(m['mAP@10'] for m in per_seed):.4f}  "
              f"({results[label]['seconds']:.0f} s)", flush=True)

    for label, names in ROWS:
        if rows is None or names[0] in rows:
            run(label, names)
    hybrids = [(label, names) for label, names in ROWS if names[0].startswith(("late", "mid"))
               and "per_seed" in results.get(label, {}) and encoder_choice_matters(names, settings)]
    if hybrids:
        best_label, best_names = max(hybrids, key=lambda r: statistics.mean(m["mAP@10"]
                                                                            for m in results[r[0]]["per_seed"]))
        run(f"{best_label}, separate encoder", best_names, {"separate_metadata_encoder": True})

    table = {label: (summarise(r["per_seed"]) if "per_seed" in r else {c: "n/a" for c in METRIC_COLUMNS})
             for label, r in results.items()}
    header = (f"{dataset}, evaluation split ({len(eval_items)} clips, {len(owners)} queries), "
              f"{len(seed_list)} seed(s), mean ± std. Command: `{command.strip()}`; machine: {platform.machine()}, "
              f"{torch.get_num_threads()} CPU threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
              f"date: {date.today().isoformat()}.")
    return TableResult(results, header + "\n\n" + markdown_table(table, first="system"))


def write_table(result: TableResult, out: str | Path) -> None:
    """table.md and table.json in the folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(result.markdown + "\n")
    header = result.markdown.split("\n", 1)[0]
    (out / "table.json").write_text(json.dumps({"header": header, "rows": result.rows}, indent=1))
