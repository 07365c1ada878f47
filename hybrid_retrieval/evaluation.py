"""Evaluating a retrieval model on a dataset split: every caption queries the split's clips.

With a relevance file (DCASE 2025's extra annotations, `metrics.read_relevance_csv`), the file's
queries are also scored against all the clips that match them, beside the original numbers (each
caption's own clip the only relevant one).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.metrics import audio_to_text_metrics, retrieval_metrics
from hybrid_retrieval.model import RetrievalModel

# mAP@16 is DCASE 2025's headline metric; mAP@10 that of the years before
RELEVANCE_MAP_KS = (16, 10)


def relevance_lists(items: Sequence[CatalogueItem], captions: Sequence[str],
                    relevance: Mapping[str, Sequence[str]]) -> tuple[list[int], list[list[int]]]:
    """For each query of `relevance` ({query: [file names]}): its row among `captions` (the
    split's caption queries) and the indices in `items` of its relevant clips (matched by
    item_id, the dataset's file name, exactly). Queries or file names the split does not have
    raise one BadInputError listing the first few of each."""
    if not relevance:
        raise BadInputError("the relevance annotations hold no queries")
    row_of: dict[str, int] = {}
    for row, caption in enumerate(captions):
        row_of.setdefault(caption, row)
    index_of = {item.item_id: i for i, item in enumerate(items)}
    missing_queries = [query for query in relevance if query not in row_of]
    missing_files = list(dict.fromkeys(name for names in relevance.values() for name in names
                                       if name not in index_of))
    if missing_queries or missing_files:
        parts = [f"{len(found)} {what} not in the split, e.g. {found[:3]}"
                 for what, found in (("queries are", missing_queries), ("file names are", missing_files)) if found]
        raise BadInputError(f"the relevance annotations do not match this split: {'; '.join(parts)}")
    return ([row_of[query] for query in relevance],
            [[index_of[name] for name in names] for names in relevance.values()])


def evaluate(model: RetrievalModel, items: list[CatalogueItem], cache_dir: str | Path | None = None,
             progress: bool = True, relevance: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """Text->audio (mAP@10, R@1/5/10) and audio->text metrics of `model` on `items`.

    Items are embedded with their metadata of the model's kinds (hybrid models); `cache_dir`
    caches the towers' outputs and is only appropriate when the towers are pretrained/frozen.
    With `relevance` ({query: [file names]}, see `relevance_lists`) the result also has
    "relevance": {"queries": how many, "single": text->audio metrics with mAP@16 of every caption
    against its own clip, "multi": the same metrics of the annotated queries against all their
    clips}.
    """
    if not items:
        raise BadInputError("cannot evaluate on an empty split (no items with audio)")
    owners, captions = caption_pairs(items)
    if not captions:
        raise BadInputError("the split has no captions to use as queries")
    if relevance is not None:
        rows, relevant = relevance_lists(items, captions, relevance)
    metadata = [it.metadata_text(model.config.metadata) for it in items] if model.uses_metadata else None
    item_emb = embed_catalogue(model, [it.audio_path for it in items], metadata, cache_dir, progress=progress)
    query_emb = embed_queries(model, captions, cache_dir, progress=progress)
    similarity = query_emb @ item_emb.T
    out: dict[str, dict] = {"text_to_audio": retrieval_metrics(similarity, owners),
                            "audio_to_text": audio_to_text_metrics(similarity, owners)}
    if relevance is not None:
        out["relevance"] = {"queries": len(rows),
                            "single": retrieval_metrics(similarity, owners, map_ks=RELEVANCE_MAP_KS),
                            "multi": retrieval_metrics(similarity[rows], relevant, map_ks=RELEVANCE_MAP_KS)}
    return out
