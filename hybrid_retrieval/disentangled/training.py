"""Training a conditional similarity network on labelled tracks.

An experiment config (configs/disentangled/*.yaml, sacred `with key=value`) is one flat mapping
of the keys of :class:`~hybrid_retrieval.disentangled.model.CSNConfig` and of
:class:`CSNTrainConfig` below. Each epoch visits every track once, in batches of `batch_size`
tracks; each track gives one random segment (for the condition terms) and, when track
regularization is on, a second one overlapping the first by at most `max_overlap`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.config_base import StrictConfig, partition_keys
from hybrid_retrieval.disentangled.checkpoint import default_checkpoint, save_model
from hybrid_retrieval.disentangled.conditions import (
    DEFAULT_CONDITIONS,
    DEFAULT_LABEL_COLUMNS,
    TempoTolerance,
    encode_labels,
)
from hybrid_retrieval.disentangled.evaluation import evaluate_triplets
from hybrid_retrieval.disentangled.features import (
    FeatureSource,
    TrackFeatures,
    create_source,
    load_track_features,
    sample_segment_pair,
    segment_frames,
)
from hybrid_retrieval.disentangled.losses import TripletBatch, build_loss
from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.hub import check_writable, save_or_rescue

log = logging.getLogger("hybrid_retrieval")


@dataclass
class CSNTrainConfig(StrictConfig):
    # data: SynthMusic's layout (factors_{split}.csv beside clotho_audio_{split}/)
    data_root: str = "data/synthmusic"
    train_split: str = "development"
    val_split: str | None = "validation"  # triplet accuracy reported after training (None: skip)
    label_columns: dict = field(default_factory=lambda: dict(DEFAULT_LABEL_COLUMNS))
    limit_items: int | None = None  # first N tracks of each split (smoke tests)
    audio_weights: str | None = None  # explicit weights file of the frozen tower
    cache_dir: str | None = ".cache/features"  # feature cache, shared with the retrieval models
    # objective
    condition_weights: dict = field(default_factory=lambda: {c: 1.0 for c in DEFAULT_CONDITIONS})
    track_weight: float = 1.0  # track regularization (0: off)
    mask_l1: float = 0.0  # L1 on learned masks (masks=learned only)
    margin: float = 0.2  # triplet margin, on L2-normalised subspace embeddings
    max_overlap: float = 0.5  # most a track-regularization segment pair may overlap
    tempo_positive: float = 0.04  # tempi within 4 % are similar ...
    tempo_negative: float = 0.15  # ... and 15 % or more apart are different
    # optimisation: AdamW, cosine decay over all steps
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    progress: bool = True
    export_default: bool = False  # also install the model as the `similar` command's default

    @property
    def tolerance(self) -> TempoTolerance:
        return TempoTolerance(self.tempo_positive, self.tempo_negative)


def split_csn_config(flat: dict) -> tuple[CSNConfig, CSNTrainConfig]:
    """Split a flat experiment config into (CSNConfig, CSNTrainConfig); unknown keys are an error."""
    model_part, train_part = partition_keys(flat, CSNConfig, CSNTrainConfig)
    model, train = CSNConfig.from_dict(model_part), CSNTrainConfig.from_dict(train_part)
    if train.mask_l1 and model.masks != "learned":
        raise BadInputError("mask_l1 applies to learned masks only (masks=learned)")
    return model, train


def sample_segments(sequences: list[Tensor], idx: np.ndarray, length: int, max_overlap: float, track_pairs: bool,
                    rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """A batch of `length`-frame segments of the tracks `idx`: one random segment of each, then,
    with `track_pairs`, a second segment of every track long enough to hold two that overlap by at
    most `max_overlap`. Returns the (rows, length, dim) segments and each row's batch track id."""
    first, second, owners = [], [], []
    for row, i in enumerate(idx):
        seq = sequences[i]
        if len(seq) < length:
            raise BadInputError(f"track {i} has {len(seq)} frames, fewer than a segment ({length})")
        pair = sample_segment_pair(len(seq), length, max_overlap, rng) if track_pairs else None
        start = pair[0] if pair is not None else int(rng.integers(len(seq) - length + 1))
        first.append(seq[start:start + length])
        if pair is not None:
            second.append(seq[pair[1]:pair[1] + length])
            owners.append(row)
    tracks = torch.cat([torch.arange(len(idx)), torch.tensor(owners, dtype=torch.long)])
    return torch.stack(first + second), tracks


def fit(model_config: CSNConfig, train_config: CSNTrainConfig, source: FeatureSource,
        data: TrackFeatures) -> tuple[ConditionalSimilarityNet, list[dict]]:
    """Train a model from scratch on `data`; returns it and the mean loss terms per epoch."""
    torch.manual_seed(train_config.seed)
    rng = np.random.default_rng(train_config.seed)
    model = ConditionalSimilarityNet(model_config, source.dim)
    criterion = build_loss(model_config.conditions, train_config.condition_weights, train_config.track_weight,
                           train_config.mask_l1, train_config.margin, train_config.tolerance)
    labels = {c: encode_labels(c, data.tracks.labels[c]) for c in model_config.conditions}
    length = segment_frames(model_config.segment_seconds, source.frame_seconds)
    track_pairs = "track" in criterion.weights
    n = len(data.sequences)
    batches = [(s, min(s + train_config.batch_size, n)) for s in range(0, n, train_config.batch_size)]
    batches = [b for b in batches if b[1] - b[0] >= 2]  # a lone track forms no triplet
    if not batches:
        raise BadInputError(f"{n} training track(s): too few for triplets")
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_config.epochs * len(batches))
    history = []
    model.train()
    for epoch in tqdm(range(train_config.epochs), desc="training", disable=not train_config.progress):
        order = rng.permutation(n)
        sums: dict[str, float] = {}
        for start, stop in batches:
            idx = order[start:stop]
            segments, tracks = sample_segments(data.sequences, idx, length, train_config.max_overlap, track_pairs, rng)
            batch = TripletBatch(model(segments), tracks, {c: v[idx] for c, v in labels.items()}, len(idx))
            loss, parts = criterion(batch, model.masks())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for name, value in {"loss": loss.item(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value / len(batches)
        history.append({"epoch": epoch + 1, **sums})
        log.debug("epoch %d: %s", epoch + 1, sums)
    return model.eval(), history


def train_disentangled(model_config: CSNConfig, train_config: CSNTrainConfig, run_dir: str | Path) -> dict:
    """Train, report the validation split's triplet accuracy, save the model to `run_dir`/model
    (and, with export_default, to the `similar` command's default checkpoint); returns metrics."""
    started = time.perf_counter()
    source = create_source(model_config.encoder, model_config.audio_encoder, train_config.audio_weights)
    load = dict(conditions=model_config.conditions, label_columns=train_config.label_columns,
                cache_dir=train_config.cache_dir, limit=train_config.limit_items, progress=train_config.progress)
    data = load_track_features(source, train_config.data_root, train_config.train_split, **load)
    targets = [Path(run_dir) / "model"] + ([default_checkpoint()] if train_config.export_default else [])
    for target in targets:  # checked before training, so a location that refuses costs no training
        check_writable(target, directory=True)
    model, history = fit(model_config, train_config, source, data)
    metrics: dict = {"loss": history[-1], "seconds": round(time.perf_counter() - started, 1)}

    def save() -> None:
        for target in targets:
            save_or_rescue(lambda path: save_model(path, model, source, train_config.to_dict(), metrics), target,
                           "the trained similarity model")
            log.info("saved %s", target)

    save()  # before evaluation, so that a failing evaluation loses no trained model
    if train_config.val_split:
        val = load_track_features(source, train_config.data_root, train_config.val_split, **load)
        try:
            metrics["val_triplet_accuracy"] = evaluate_triplets(model, source, val, seed=train_config.seed,
                                                                tolerance=train_config.tolerance)
        except BadInputError as exc:  # e.g. a validation split too small to form a triplet of a condition
            log.warning("no validation triplet accuracy: %s (%s/%s); the model is saved without it", exc,
                        train_config.data_root, train_config.val_split)
        else:
            save()  # again, with the validation metrics in its config.json
    log.info("%s", json.dumps(metrics))
    return metrics
