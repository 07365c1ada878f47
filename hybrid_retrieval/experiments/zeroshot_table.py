"""The zero-shot classification table on SynthMusic: genre, mood, lead instrument and tempo bin.

Each condition's classes are the labels of that column of the split's `factors_{split}.csv`
(genre, mood, lead_instrument, tempo_bin); each class name is put into the condition's prompt
(PROMPTS, worded unlike the captions' templates of `data/synthmusic_text.py`, so the models are
not asked in the words they were trained on) and every clip of the split is classified by each
model, its items embedded once without metadata (as `zeroshot.classify_items` does, single-label). Columns per
condition: accuracy (the arg-max class is the clip's label) and macro AUC-ROC (one class against
the rest, from the softmax scores, averaged over the classes; `macro_roc_auc`), beside chance
(accuracy 1 / number of classes, AUC 0.5).
"""
from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from hybrid_retrieval.data.registry import load_split, resolve_split
from hybrid_retrieval.data.synthmusic import read_factors
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.report import markdown_table

# condition -> (column of factors_{split}.csv, prompt)
PROMPTS = {
    "genre": ("genre", "this is {} music"),
    "mood": ("mood", "a recording that sounds {}"),
    "instrument": ("lead_instrument", "the lead instrument is the {}"),
    "tempo": ("tempo_bin", "the tempo is {}"),
}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean labels `positive`, by the rank
    formula (Mann-Whitney U): (sum of the positives' ranks - P(P + 1)/2) / (P N), ranks from 1,
    tied scores sharing their mean rank (so a tie counts one half). Here rather than scikit-learn's
    `roc_auc_score`, which it equals, because scikit-learn is an optional extra."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise BadInputError(f"AUC-ROC needs positive and negative examples, got {n_pos} and {n_neg}")
    ranks = rankdata(np.asarray(scores, dtype=np.float64), method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes c of roc_auc(scores[:, c], targets == c) (one against the rest; what
    scikit-learn's roc_auc_score(targets, scores, multi_class="ovr", average="macro") computes)."""
    return float(np.mean([roc_auc(scores[:, c], targets == c) for c in range(scores.shape[1])]))


def system_label(model) -> str:
    """A table row's name from a model's config."""
    config = model.config
    if config.fusion == "audioset_tags":
        return "training-free (AudioSet tags)"
    if not model.uses_metadata:
        return "content-only"
    return f"{config.fusion} fusion, {config.metadata.upper()} (items without metadata)"


@dataclass
class ZeroShotResult:
    rows: dict[str, dict]  # system -> {"checkpoint", condition -> {"accuracy", "macro_auc"}}
    classes: dict[str, list[str]]  # condition -> class names
    markdown: str  # header line + table


def run_zeroshot(checkpoints: Sequence[str], root: str | Path, split: str = "evaluation",
                 cache_dir: str | Path | None = None, device: str = "auto", command: str = "") -> ZeroShotResult:
    """Classify `split` of the SynthMusic at `root` with each checkpoint (anything
    `models.load_retrieval_model` takes) per condition; `cache_dir`: feature cache, used for
    models whose towers are frozen pretrained ones."""
    from hybrid_retrieval.models import load_retrieval_model
    from hybrid_retrieval.zeroshot import class_probabilities, clip_embeddings, prompted, text_embeddings

    split = resolve_split("synthmusic", split)
    items = load_split("synthmusic", root, split)
    if not items:
        raise BadInputError(f"no clips in synthmusic split {split!r} of {root}")
    factors = {row["file_name"]: row for row in read_factors(root, split)}
    classes, targets = {}, {}
    for condition, (column, _) in PROMPTS.items():
        labels = [factors[item.item_id][column] for item in items]
        classes[condition] = sorted(set(labels))
        targets[condition] = np.array([classes[condition].index(label) for label in labels])
    rows: dict[str, dict] = {}
    for spec in checkpoints:
        model, info = load_retrieval_model(spec, device)
        clips = clip_embeddings(model, items, cache_dir=cache_dir if model.cache_is_valid else None, progress=False)
        row: dict = {"checkpoint": info["path"]}
        for condition, (_, prompt) in PROMPTS.items():
            cosines = clips @ text_embeddings(model, prompted(classes[condition], prompt)).T
            scores = class_probabilities(cosines, float(model.logit_scale)).numpy()
            row[condition] = {"accuracy": float(np.mean(scores.argmax(1) == targets[condition])),
                              "macro_auc": macro_roc_auc(scores, targets[condition])}
        label = system_label(model)
        rows[label if label not in rows else f"{label} [{info['path']}]"] = row
    chance = {condition: {"accuracy": 1 / len(names), "macro_auc": 0.5} for condition, names in classes.items()}
    columns = [f"{condition} {metric}" for condition in PROMPTS for metric in ("acc", "AUC")]
    cells = {label: {f"{condition} {metric}": row[condition][key] for condition in PROMPTS
                     for metric, key in (("acc", "accuracy"), ("AUC", "macro_auc"))}
             for label, row in {"chance": chance, **rows}.items()}
    header = (f"synthmusic/{split}: {len(items)} clips; classes: "
              + "; ".join(f"{c} {len(names)}" for c, names in classes.items())
              + f". Command: `{command.strip()}`; machine: {platform.machine()}, {torch.get_num_threads()} CPU "
              f"threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}; date: {date.today().isoformat()}.")
    return ZeroShotResult(rows, classes, header + "\n\n" + markdown_table(cells, columns))
