"""Contrastive audio-text losses over a batch of (query, item) pairs.

`ContrastiveLoss(kind="ntxent")`: symmetric NT-Xent in which every pair of the batch that shares
an audio clip counts as positive: for each positive (q, a), -log e^{s_qa} / (e^{s_qa} + sum over
the negatives of q of e^{s_qn}), averaged over positive pairs, in both directions (text->audio,
audio->text). With one caption per clip in a batch this is InfoNCE / CLIP's loss. It equals
pytorch-metric-learning's `NTXentLoss` applied in both directions (tested).
`kind="cmc"`: MuLan's batch-wise Contrastive Multiview Coding loss: cross-entropy over the batch
with the diagonal as the only target, in both directions.

Written here rather than taken from pytorch-metric-learning because the temperature may be a
learned parameter, and the embeddings are gathered across ranks with gradients (open_clip's
scheme) so negatives come from the global batch.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid_retrieval.distributed import gather_no_grad, gather_with_grad
from hybrid_retrieval.errors import BadInputError


def _ntxent_one_direction(logits: Tensor, positive: Tensor) -> Tensor:
    negatives = logits.masked_fill(positive, float("-inf"))
    neg_lse = torch.logsumexp(negatives, dim=1, keepdim=True).expand_as(logits)
    per_pair = torch.logaddexp(logits, neg_lse) - logits  # -log softmax of the pair against the negatives
    return per_pair[positive].mean()


def _cmc_one_direction(logits: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


class ContrastiveLoss(nn.Module):
    def __init__(self, kind: str = "ntxent") -> None:
        super().__init__()
        if kind not in ("ntxent", "cmc"):
            raise BadInputError(f"contrastive loss must be 'ntxent' or 'cmc', not {kind!r}")
        self.kind = kind

    def forward(self, queries: Tensor, items: Tensor, item_ids: Tensor, logit_scale: Tensor | float) -> Tensor:
        """queries, items: (batch, dim) L2-normalised, row i of each forming a pair;
        item_ids: (batch,) id of the clip of pair i (equal ids are positives of each other)."""
        queries, items = gather_with_grad(queries), gather_with_grad(items)
        item_ids = gather_no_grad(item_ids)
        logits = logit_scale * queries @ items.T
        if self.kind == "cmc":
            return 0.5 * (_cmc_one_direction(logits) + _cmc_one_direction(logits.T))
        positive = item_ids[:, None] == item_ids[None, :]
        return 0.5 * (_ntxent_one_direction(logits, positive) + _ntxent_one_direction(logits.T, positive))
