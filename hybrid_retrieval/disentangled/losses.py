"""The training objective: one weighted triplet term per condition, plus track regularization.

Every term is a small module pairing a pytorch-metric-learning miner with a TripletMarginLoss on
masked embeddings (PML's default distance L2-normalises them, so the loss sees cosine geometry,
as search does):

* :class:`ConditionTriplet`: triplets of one condition, in its subspace. Categorical conditions
  use PML's TripletMarginMiner on class labels; tempo uses :class:`TempoTripletMiner`.
* :class:`TrackRegularization`: anchor and positive are two segments of one track (the sampler
  keeps their overlap at most `max_overlap`), negatives are segments of other tracks; applied in
  every subspace (mean), so that no subspace collapses onto its condition's classes alone.
* :class:`MaskSparsity`: L1 on learned masks (Veit et al.), for masks="learned" only.

:class:`DisentangledLoss` sums the terms with their weights, in the spirit of PML's
MultipleLosses, but handing each term the labels it needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BaseMiner, TripletMarginMiner
from torch import Tensor, nn

from hybrid_retrieval.disentangled.conditions import TEMPO, TempoTolerance, tempo_relations
from hybrid_retrieval.errors import BadInputError


@dataclass
class TripletBatch:
    """Embeddings of one batch: rows [0, n_tracks) are one segment of each track, the rows after
    them second segments of some of those tracks (for track regularization)."""

    embeddings: Tensor  # (rows, embed_dim)
    tracks: Tensor  # (rows,) track id of each row
    labels: dict[str, Tensor]  # condition -> (n_tracks,) labels of the first rows
    n_tracks: int


class TempoTripletMiner(BaseMiner):
    """All (anchor, positive, negative) triplets whose tempi are similar / different under a
    :class:`TempoTolerance`. Hand-written because PML's miners compare class labels for equality,
    and tempo similarity with a tolerance is no equivalence (100 ~ 103 ~ 106 BPM, 100 !~ 106).
    The loss's AvgNonZeroReducer then averages those that violate the margin, which is what
    TripletMarginMiner(type_of_triplets="all") yields for the categorical conditions."""

    def __init__(self, tolerance: TempoTolerance = TempoTolerance(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> tuple[Tensor, ...]:
        similar, different = tempo_relations(labels, None if ref_labels is labels else ref_labels, self.tolerance)
        return torch.where(similar[:, :, None] & different[:, None, :])


class ConditionTriplet(nn.Module):
    """Triplet loss of one condition on the first segment of each track, in its masked subspace."""

    def __init__(self, condition: str, index: int, margin: float, tolerance: TempoTolerance) -> None:
        super().__init__()
        self.condition, self.index = condition, index
        self.miner = TempoTripletMiner(tolerance) if condition == TEMPO else TripletMarginMiner(margin, "all")
        self.loss = TripletMarginLoss(margin=margin)

    def forward(self, batch: TripletBatch, masks: Tensor) -> Tensor:
        masked = batch.embeddings[:batch.n_tracks] * masks[self.index]
        labels = batch.labels[self.condition]
        return self.loss(masked, labels, self.miner(masked, labels))


class TrackRegularization(nn.Module):
    """Same-track segments as positives, other tracks' segments as negatives, in each subspace."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.miner = TripletMarginMiner(margin, "all")
        self.loss = TripletMarginLoss(margin=margin)

    def forward(self, batch: TripletBatch, masks: Tensor) -> Tensor:
        losses = []
        for mask in masks:
            masked = batch.embeddings * mask
            losses.append(self.loss(masked, batch.tracks, self.miner(masked, batch.tracks)))
        return torch.stack(losses).mean()


class MaskSparsity(nn.Module):
    """Mean absolute mask value: L1 on learned masks, a plain norm that needs no library."""

    def forward(self, batch: TripletBatch, masks: Tensor) -> Tensor:
        return masks.abs().mean()


class DisentangledLoss(nn.Module):
    """Weighted sum of named terms; terms with weight 0 are left out and cost nothing."""

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        kept = {name: (term, float(weight)) for name, (term, weight) in terms.items() if weight}
        if not kept:
            raise BadInputError("every loss term has weight 0")
        self.terms = nn.ModuleDict({name: term for name, (term, _) in kept.items()})
        self.weights = {name: weight for name, (_, weight) in kept.items()}

    def forward(self, batch: TripletBatch, masks: Tensor) -> tuple[Tensor, dict[str, float]]:
        """(total loss, each term's unweighted value)."""
        total = batch.embeddings.new_zeros(())
        parts = {}
        for name, term in self.terms.items():
            value = term(batch, masks)  # PML gives a zero tensor when a batch holds no triplet
            total = total + self.weights[name] * value
            parts[name] = value.item()
        return total, parts


def build_loss(conditions: list[str], condition_weights: dict[str, float], track_weight: float,
               mask_l1: float = 0.0, margin: float = 0.2,
               tolerance: TempoTolerance = TempoTolerance()) -> DisentangledLoss:
    """The objective of a model with these conditions; a condition absent from
    `condition_weights` has weight 1."""
    unknown = sorted(set(condition_weights) - set(conditions))
    if unknown:
        raise BadInputError(f"condition_weights names unknown condition(s) {unknown}; conditions: {conditions}")
    terms: dict[str, tuple[nn.Module, float]] = {
        c: (ConditionTriplet(c, i, margin, tolerance), condition_weights.get(c, 1.0)) for i, c in enumerate(conditions)}
    terms["track"] = (TrackRegularization(margin), track_weight)
    terms["mask_l1"] = (MaskSparsity(), mask_l1)
    return DisentangledLoss(terms)
