"""Retrieval metrics as in DCASE 2024 task 8 (language-based audio retrieval).

Each query has exactly one relevant item. Its rank is 1 + the number of items that score
strictly higher (ties are resolved in the query's favour, as in the task's evaluation code).
AP@10 of a query is 1/rank if rank <= 10 else 0; mAP@10 is its mean; R@k is the fraction of
queries whose rank is <= k.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hybrid_retrieval.errors import BadInputError


def ranks_of_relevant(similarity: torch.Tensor | np.ndarray, relevant: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """(n_queries,) 1-based rank of each query's relevant item."""
    sim = torch.as_tensor(similarity, dtype=torch.float64)
    rel = torch.as_tensor(relevant, dtype=torch.long)
    if sim.dim() != 2 or rel.shape != (sim.shape[0],):
        raise BadInputError(f"similarity must be (n_queries, n_items) and relevant (n_queries,), got "
                         f"{tuple(sim.shape)} and {tuple(rel.shape)}")
    if rel.numel() and (rel.min() < 0 or rel.max() >= sim.shape[1]):
        raise BadInputError(f"relevant indices must lie in [0, {sim.shape[1]})")
    target = sim.gather(1, rel[:, None])
    return (sim > target).sum(dim=1) + 1


def retrieval_metrics(similarity: torch.Tensor | np.ndarray, relevant: Sequence[int] | torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """mAP@10 and R@k for queries with one relevant item each. Returns {"mAP@10": .., "R@1": .., ...}."""
    ranks = ranks_of_relevant(similarity, relevant).double()
    ap10 = torch.where(ranks <= 10, 1.0 / ranks, torch.zeros_like(ranks))
    out = {"mAP@10": float(ap10.mean())}
    for k in ks:
        out[f"R@{k}"] = float((ranks <= k).double().mean())
    return out


def audio_to_text_metrics(similarity: torch.Tensor | np.ndarray, caption_item: Sequence[int] | torch.Tensor,
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Audio -> text retrieval, where an item has several relevant captions.

    similarity: (n_captions, n_items) text-to-audio scores; caption_item[c]: the item of caption c.
    Each item is a query; its rank is that of its best-ranked caption (the convention of the
    audio-captioning retrieval literature). AP@10 uses all the item's captions:
    sum over its captions ranked <= 10 of precision at that rank, divided by min(n_relevant, 10).
    """
    sim = torch.as_tensor(similarity, dtype=torch.float64).T  # (n_items, n_captions)
    owner = torch.as_tensor(caption_item, dtype=torch.long)
    order = torch.argsort(sim, dim=1, descending=True)
    hits = owner[order] == torch.arange(sim.shape[0])[:, None]  # (n_items, n_captions) in rank order
    n_rel = hits.sum(dim=1).clamp(min=1).double()
    first = hits.double().argmax(dim=1) + 1
    top = hits[:, :10].double()
    precision = top.cumsum(dim=1) / torch.arange(1, top.shape[1] + 1)
    ap10 = (precision * top).sum(dim=1) / torch.minimum(n_rel, torch.tensor(10.0))
    out = {"mAP@10": float(ap10.mean())}
    for k in ks:
        out[f"R@{k}"] = float((first <= k).double().mean())
    return out
