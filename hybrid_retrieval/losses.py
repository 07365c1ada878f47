"""Contrastive audio-text losses over a batch of (query, item) pairs.

`ContrastiveLoss(kind="ntxent")`: symmetric NT-Xent in which every pair of the batch that shares
an audio clip counts as positive: for each positive (q, a), -log e^{s_qa} / (e^{s_qa} + sum over
the negatives of q of e^{s_qn}), averaged over positive pairs, in both directions (text->audio,
audio->text). With one caption per clip in a batch this is InfoNCE / CLIP's loss. It equals
pytorch-metric-learning's `NTXentLoss` applied in both directions (tested).

`kind="cmc"`: MuLan's batch-wise Contrastive Multiview Coding loss (Huang et al., 2022). With
h(a, b) = exp(a.b / tau), f_i the query and g_i the item of pair i, each pair contributes

    -log( h(f_i, g_i) / sum over negatives j of [h(f_i, g_j) + h(f_j, g_i)] ),

averaged over the batch: one denominator holds both directions' negatives, and the positive is
not in it. The negatives of pair i are the pairs of other clips: pairs that share a clip (several
captions of one clip in a batch) are not negatives of each other and stay out of each other's
denominators, as NT-Xent treats them. A batch whose pairs are all of one clip has no negatives:
its loss is 0 (with zero gradients).

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


def _cmc(logits: Tensor, positive: Tensor) -> Tensor:
    """MuLan's loss from logits[i, j] = f_i.g_j / tau and the (symmetric) same-clip mask."""
    if positive.all():  # one clip only: no negatives, and logsumexp over nothing would be -inf
        return logits.diagonal().sum() * 0.0
    both = torch.cat([logits, logits.T], dim=1)  # row i: f_i against every g_j, then every f_j against g_i
    negatives = both.masked_fill(torch.cat([positive, positive], dim=1), float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - logits.diagonal()).mean()


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
        positive = item_ids[:, None] == item_ids[None, :]
        if self.kind == "cmc":
            return _cmc(logits, positive)
        return 0.5 * (_ntxent_one_direction(logits, positive) + _ntxent_one_direction(logits.T, positive))
