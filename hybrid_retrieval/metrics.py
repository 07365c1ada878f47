"""Retrieval metrics of DCASE language-based audio retrieval (2024 task 8, 2025 task 6).

A query has a set R of relevant items: one (its own clip; DCASE 2024) or several (the DCASE 2025
evaluation adds annotations of other clips that match the caption). The relevant items are
ordered by score, highest first (ties among them by index, which changes no number below); the
i-th of them (1-based) has

    rank_i = 1 + (number of non-relevant items scoring at least as high as it) + (i - 1),

its position in the ranking when every tie with a non-relevant item is resolved against the
query. Then, as in the DCASE 2025 baseline's `average_precision_at_k`,

    AP@K = (1 / |R|) * sum over i with rank_i <= K of i / rank_i,      R@k = #{i : rank_i <= k} / |R|,

and mAP@K, R@k are their means over the queries. With one relevant item, AP@K is 1/rank if
rank <= K, else 0. Without ties these are the usual definitions. Resolving ties against the query
means a collapsed model (all scores equal) scores about 0 (the official evaluation sorts, so its
tie order is arbitrary; the pessimistic rule is the one that cannot flatter a model).

Scores must be finite: NaN or infinite scores raise BadInputError (a diverged model).
"""
from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.errors import BadInputError, NotFoundError

# Scores of this many (query, item) pairs are sorted at once: bounds the memory of a chunk.
_CHUNK_ELEMENTS = 1 << 22

# One relevant item index per query, or one list (row) of relevant item indices per query.
Relevant = Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray


def _relevant_lists(relevant: Relevant, n_queries: int, n_items: int) -> tuple[Tensor, Tensor]:
    """(n_queries, L) relevant item indices, padded with 0, and the (n_queries,) list lengths.

    `relevant` is one index per query (a sequence of ints, or a 1-D tensor/array) or one sequence
    of indices per query (ragged lists, or a 2-D tensor/array)."""
    if isinstance(relevant, (Tensor, np.ndarray)):
        rel = torch.as_tensor(relevant)
        if rel.dim() == 1:
            rel = rel[:, None]
        if rel.dim() != 2 or rel.dtype.is_floating_point or rel.dtype == torch.bool:
            raise BadInputError(f"relevant must hold integer item indices, one or one row per query; got "
                                f"{tuple(rel.shape)} of {rel.dtype}")
        rel = rel.long()
        lengths = torch.full((rel.shape[0],), rel.shape[1], dtype=torch.long)
    else:
        relevant = list(relevant)
        single = [isinstance(r, (int, np.integer)) for r in relevant]
        if all(single):
            rel, lengths = torch.tensor(relevant, dtype=torch.long).reshape(-1, 1), torch.ones(len(relevant),
                                                                                                dtype=torch.long)
        elif any(single):
            raise BadInputError("relevant must be one item index per query or one list of indices per query, "
                                "not a mixture")
        else:
            rel, lengths = _pad(relevant)
    if rel.shape[0] != n_queries:
        raise BadInputError(f"similarity is (n_queries, n_items) = ({n_queries}, {n_items}) but relevant has "
                            f"{rel.shape[0]} entries, one per query expected")
    _check_lists(rel, lengths, n_items)
    return rel, lengths


def _pad(lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in lists], dtype=torch.long)
    flat = [i for r in lists for i in r]
    if not all(isinstance(i, (int, np.integer)) for i in flat):
        bad = next(q for q, r in enumerate(lists) if not all(isinstance(i, (int, np.integer)) for i in r))
        raise BadInputError(f"query {bad}: relevant items must be integer indices, got {list(lists[bad])[:5]}")
    width = int(lengths.max()) if len(lengths) else 0
    rel = torch.zeros(len(lists), max(width, 1), dtype=torch.long)
    row = torch.repeat_interleave(torch.arange(len(lists)), lengths)
    column = torch.arange(len(flat)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    rel[row, column] = torch.tensor(flat, dtype=torch.long)
    return rel, lengths


def _check_lists(rel: Tensor, lengths: Tensor, n_items: int) -> None:
    """One error naming the first query whose list is empty, out of range or repeats an item."""
    valid = torch.arange(rel.shape[1])[None, :] < lengths[:, None]
    empty = lengths == 0
    out_of_range = (valid & ((rel < 0) | (rel >= n_items))).any(dim=1)
    ordered = torch.where(valid, rel, torch.iinfo(torch.long).max).sort(dim=1).values
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & valid[:, 1:]).any(dim=1)
    for problem, what in ((empty, "has no relevant items"),
                          (out_of_range, f"has relevant indices outside [0, {n_items})"),
                          (repeated, "lists a relevant item twice")):
        if problem.any():
            query = int(problem.nonzero()[0])
            shown = rel[query, : int(lengths[query])].tolist()
            raise BadInputError(f"query {query} {what}: {shown[:10]}")


def _check_finite(scores: Tensor, first_query: int) -> None:
    finite = torch.isfinite(scores)
    if not finite.all():
        query, item = (int(v) for v in (~finite).nonzero()[0])
        raise BadInputError(f"similarity has non-finite scores (NaN or infinite), first at query "
                            f"{first_query + query}, item {item}: {float(scores[query, item])}")


def relevant_ranks(similarity: Tensor | np.ndarray, relevant: Relevant) -> tuple[Tensor, Tensor]:
    """(n_queries, L) rank_i of each query's relevant items in score order (see the module
    docstring), and the (n_queries, L) mask of real entries (shorter lists are padded with 0).

    Vectorised over chunks of queries: each chunk's rows are sorted once, and the number of items
    scoring at least as high as a relevant item is found by binary search (torch.searchsorted)."""
    sim = torch.as_tensor(similarity)
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.double()  # exact for integer and half-precision scores
    if sim.dim() != 2:
        raise BadInputError(f"similarity must be (n_queries, n_items), got shape {tuple(sim.shape)}")
    n_queries, n_items = sim.shape
    rel, lengths = _relevant_lists(relevant, n_queries, n_items)
    width = rel.shape[1]
    position = torch.arange(1, width + 1)
    valid = position[None, :] <= lengths[:, None]
    ranks = torch.empty(n_queries, width, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, n_items))
    for start in range(0, n_queries, step):
        rows = slice(start, start + step)
        scores = sim[rows]
        _check_finite(scores, start)
        # the relevant items' scores, highest first; padding (-inf) goes last
        rel_scores = scores.gather(1, rel[rows]).masked_fill(~valid[rows], float("-inf"))
        rel_scores = rel_scores.sort(dim=1, descending=True).values
        at_least = n_items - torch.searchsorted(scores.sort(dim=1).values, rel_scores, side="left")
        relevant_at_least = width - torch.searchsorted(rel_scores.flip(1), rel_scores, side="left")
        ranks[rows] = 1 + (at_least - relevant_at_least) + (position - 1)
    return ranks.masked_fill_(~valid, 0), valid


def retrieval_metrics(similarity: Tensor | np.ndarray, relevant: Relevant, ks: Sequence[int] = (1, 5, 10),
                      map_ks: Sequence[int] = (10,)) -> dict[str, float]:
    """mAP@K for each K in `map_ks`, then R@k for each k in `ks` (the module docstring defines them).

    similarity: (n_queries, n_items) scores; relevant: one item index per query, or one list of
    item indices per query. Returns e.g. {"mAP@10": .., "R@1": .., "R@5": .., "R@10": ..}."""
    ranks, valid = relevant_ranks(similarity, relevant)
    ranks = ranks.double()
    n_relevant = valid.sum(dim=1).double()
    position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)
    out = {}
    for k in map_ks:
        hit = valid & (ranks <= k)
        precision = torch.where(hit, position / ranks, torch.zeros_like(ranks))
        out[f"mAP@{k}"] = float((precision.sum(dim=1) / n_relevant).mean())
    for k in ks:
        out[f"R@{k}"] = float(((valid & (ranks <= k)).sum(dim=1) / n_relevant).mean())
    return out


def audio_to_text_metrics(similarity: Tensor | np.ndarray, caption_item: Sequence[int] | Tensor,
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


def read_relevance_csv(path: str | Path) -> dict[str, list[str]]:
    """The DCASE 2025 extra relevance annotations: {query: [audio file names]}.

    The organisers' file as published: UTF-8 CSV with the header `query,audio_filenames`, the
    second column a Python list literal of file names (read with ast.literal_eval, never eval).
    File names are kept byte for byte (some contain HTML entities such as `&#39;`, as Clotho's own
    file names do). A query on several rows gets the union of their lists, and a name listed twice
    counts once. A malformed row raises one BadInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"relevance file not found: {path}")
    table: dict[str, dict[str, None]] = {}  # dicts as ordered sets
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header != ["query", "audio_filenames"]:
                raise BadInputError(f"{path}: line 1: expected the header query,audio_filenames, got {header}")
            for row in reader:
                query, files = _relevance_row(row, f"{path}: line {reader.line_num}")
                table.setdefault(query, {}).update(dict.fromkeys(files))
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return {query: list(files) for query, files in table.items()}


def _relevance_row(row: list[str], where: str) -> tuple[str, list[str]]:
    if len(row) != 2:
        raise BadInputError(f"{where}: expected 2 fields (query, audio_filenames), got {len(row)}: {row[:3]}")
    query, names = row
    try:
        files = ast.literal_eval(names)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise BadInputError(f"{where}: audio_filenames is not a Python list literal: {names[:80]!r}") from exc
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise BadInputError(f"{where}: audio_filenames must be a non-empty list of file names, got {names[:80]!r}")
    return query, files
