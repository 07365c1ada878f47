"""Triplet accuracy per condition: how often a model ranks a held-out triplet the right way round.

For each condition, triplets (anchor, positive, negative) of tracks are drawn from the exact
labels with a fixed seed (same triplets for every model): the anchor uniformly among tracks that
have a positive and a negative, then one of each uniformly. A triplet is right when the anchor's
cosine similarity to the positive beats that to the negative in the condition's subspace; ties
count as wrong. Tracks are embedded as the mean of non-overlapping segments covering them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.disentangled.conditions import TempoTolerance, encode_labels, relations
from hybrid_retrieval.disentangled.features import FeatureSource, TrackFeatures, segment_frames
from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, embed_tracks
from hybrid_retrieval.errors import BadInputError

DEFAULT_TRIPLETS = 3000


def sample_triplets(condition: str, labels: list, n: int, seed: int = 0,
                    tolerance: TempoTolerance = TempoTolerance()) -> Tensor:
    """(n, 3) track indices (anchor, positive, negative) under one condition's labels."""
    similar, different = relations(condition, encode_labels(condition, labels), tolerance)
    anchors = torch.nonzero(similar.any(1) & different.any(1)).flatten().numpy()
    if not len(anchors):
        raise BadInputError(f"no triplet can be formed for condition {condition!r} from {len(labels)} tracks")
    rng = np.random.default_rng([seed, sum(map(ord, condition))])
    triplets = np.empty((n, 3), dtype=np.int64)
    for row, anchor in enumerate(rng.choice(anchors, size=n)):
        triplets[row] = (anchor, rng.choice(torch.nonzero(similar[anchor]).flatten().numpy()),
                         rng.choice(torch.nonzero(different[anchor]).flatten().numpy()))
    return torch.from_numpy(triplets)


@torch.inference_mode()
def triplet_accuracy(model: ConditionalSimilarityNet, embeddings: Tensor, condition: str, triplets: Tensor) -> float:
    """Fraction of triplets with sim(anchor, positive) > sim(anchor, negative) in the subspace."""
    sub = model.subspace(embeddings, condition)
    a, p, n = (sub[triplets[:, k]] for k in range(3))
    return float(((a * p).sum(-1) > (a * n).sum(-1)).float().mean())


@torch.inference_mode()
def evaluate_triplets(model: ConditionalSimilarityNet, source: FeatureSource, data: TrackFeatures,
                      n_triplets: int = DEFAULT_TRIPLETS, seed: int = 0,
                      tolerance: TempoTolerance = TempoTolerance()) -> dict[str, float]:
    """Triplet accuracy of each of the model's conditions, and their mean ("mean")."""
    embeddings = embed_tracks(model, data.sequences, segment_frames(model.config.segment_seconds, source.frame_seconds))
    scores = {c: triplet_accuracy(model, embeddings, c,
                                  sample_triplets(c, data.tracks.labels[c], n_triplets, seed, tolerance))
              for c in model.config.conditions}
    scores["mean"] = float(np.mean(list(scores.values())))
    return scores
