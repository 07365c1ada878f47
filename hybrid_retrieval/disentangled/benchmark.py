"""The disentanglement table: triplet accuracy per condition of the four named configs.

Rows are the named configs of configs/disentangled/ (the same ones `scripts/train_disentangled.py
with NAME` trains): the proposal (CSN + track regularization), CSN without it, one unmasked space
trained on every condition, and one specialised model per condition. All of them are trained on
the train split and scored on the evaluation split with the same held-out triplets. The frozen
tower and the features are loaded once for all rows.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from hybrid_retrieval.disentangled.checkpoint import save_model
from hybrid_retrieval.disentangled.evaluation import DEFAULT_TRIPLETS, evaluate_triplets
from hybrid_retrieval.disentangled.features import create_source, load_track_features
from hybrid_retrieval.disentangled.training import fit, split_csn_config
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.experiments.config import compose, merge

log = logging.getLogger("hybrid_retrieval")

CSN_ROWS = {
    "csn_track": "CSN + track regularization",
    "csn": "CSN",
    "unmasked": "single unmasked space",
    "specialised": "specialised model per condition",
}


def run_triplet_benchmark(data_root: str | Path = "data/synthmusic", cache_dir: str | Path | None = ".cache/features",
                          seed: int = 0, configs: tuple[str, ...] = tuple(CSN_ROWS), n_triplets: int = DEFAULT_TRIPLETS,
                          overrides: dict | None = None, out_dir: str | Path | None = None,
                          train_split: str = "development", eval_split: str = "evaluation",
                          progress: bool = False, num_threads: int | None = 1) -> dict:
    """Train each named config (with `overrides` on top, and `seed`) and score it.

    num_threads: torch CPU threads while it runs (restored after; None: leave as is). One is the
    default because the heads and losses are small: on a shared 2-core machine two threads spent
    more time waiting on each other than computing (BENCHMARKS.md, disentangled table).

    Returns {"rows": [{"config", "label", <condition>: accuracy, ..., "mean"}], "conditions",
    "n_triplets", "seed", "eval_split", "n_eval_tracks", "seconds": {"features", "train": {config: s},
    "evaluate", "total"}}.
    With `out_dir`, each model is saved to out_dir/CONFIG (loadable by the `similar` command).
    """
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run(data_root, cache_dir, seed, configs, n_triplets, overrides, out_dir, train_split, eval_split,
                    progress)
    finally:
        torch.set_num_threads(threads)


def _run(data_root: str | Path, cache_dir: str | Path | None, seed: int, configs: tuple[str, ...], n_triplets: int,
         overrides: dict | None, out_dir: str | Path | None, train_split: str, eval_split: str,
         progress: bool) -> dict:
    started = time.perf_counter()
    fixed = {"seed": seed, "data_root": str(data_root), "cache_dir": None if cache_dir is None else str(cache_dir),
             "train_split": train_split, "progress": progress}
    flats = {name: compose([name], merge(overrides or {}, fixed), group="disentangled") for name in configs}
    parsed = {name: split_csn_config(flat) for name, flat in flats.items()}
    first_model, first_train = next(iter(parsed.values()))
    for name, (model_config, train_config) in parsed.items():
        if (model_config.encoder, model_config.audio_encoder, model_config.conditions, train_config.label_columns) != (
                first_model.encoder, first_model.audio_encoder, first_model.conditions, first_train.label_columns):
            raise BadInputError(f"config {name!r} uses other features, conditions or labels than {configs[0]!r}; "
                             "the rows of one table must share them")
    source = create_source(first_model.encoder, first_model.audio_encoder, first_train.audio_weights)
    load = dict(conditions=first_model.conditions, label_columns=first_train.label_columns, cache_dir=cache_dir,
                limit=first_train.limit_items, progress=progress)
    train_data = load_track_features(source, data_root, train_split, **load)
    eval_data = load_track_features(source, data_root, eval_split, **load)
    seconds: dict = {"features": time.perf_counter() - started, "train": {}, "evaluate": 0.0}
    rows = []
    for name, (model_config, train_config) in parsed.items():
        tick = time.perf_counter()
        model, _history = fit(model_config, train_config, source, train_data)
        seconds["train"][name] = time.perf_counter() - tick
        tick = time.perf_counter()
        scores = evaluate_triplets(model, source, eval_data, n_triplets, seed, train_config.tolerance)
        seconds["evaluate"] += time.perf_counter() - tick
        rows.append({"config": name, "label": CSN_ROWS.get(name, name), **scores})
        log.info("%s: %s", name, scores)
        if out_dir is not None:
            save_model(Path(out_dir) / name, model, source, train_config.to_dict(), {"eval_triplet_accuracy": scores})
    seconds["total"] = time.perf_counter() - started
    return {"rows": rows, "conditions": first_model.conditions, "n_triplets": n_triplets, "seed": seed,
            "eval_split": eval_split, "n_eval_tracks": len(eval_data.tracks), "seconds": seconds}


def mean_over_seeds(results: list[dict]) -> dict:
    """Benchmark results of several seeds as one: each cell the mean, with its std as "<cell>_std"."""
    merged = {**{k: v for k, v in results[0].items() if k not in ("seed", "seconds")}, "rows": [],
              "seeds": [r["seed"] for r in results], "seconds": [r["seconds"] for r in results]}
    columns = [*results[0]["conditions"], "mean"]
    for rows in zip(*(r["rows"] for r in results)):
        row = {"config": rows[0]["config"], "label": rows[0]["label"]}
        for c in columns:
            values = [r[c] for r in rows]
            row[c] = statistics.fmean(values)
            row[f"{c}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        merged["rows"].append(row)
    return merged


def triplet_table(result: dict) -> str:
    """The benchmark's rows as a Markdown table of accuracies in % (mean ± std where rows have stds)."""
    columns = [*result["conditions"], "mean"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in result["rows"]:
        cells = [f"{100 * row[c]:.1f}" + (f" ± {100 * row[c + '_std']:.1f}" if c + "_std" in row else "")
                 for c in columns]
        lines.append(f"| {row['label']} (`{row['config']}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
