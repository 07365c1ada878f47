"""Evaluating a retrieval model on a dataset split: every caption queries the split's clips."""
from __future__ import annotations

from pathlib import Path

from hybrid_retrieval.data.items import CatalogueItem, caption_pairs
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.metrics import audio_to_text_metrics, retrieval_metrics
from hybrid_retrieval.model import RetrievalModel


def evaluate(model: RetrievalModel, items: list[CatalogueItem], cache_dir: str | Path | None = None,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Text->audio (mAP@10, R@1/5/10) and audio->text metrics of `model` on `items`.

    Items are embedded with their metadata of the model's kinds (hybrid models); `cache_dir`
    caches the towers' outputs and is only appropriate when the towers are pretrained/frozen.
    """
    if not items:
        raise BadInputError("cannot evaluate on an empty split (no items with audio)")
    owners, captions = caption_pairs(items)
    if not captions:
        raise BadInputError("the split has no captions to use as queries")
    metadata = [it.metadata_text(model.config.metadata) for it in items] if model.uses_metadata else None
    item_emb = embed_catalogue(model, [it.audio_path for it in items], metadata, cache_dir, progress=progress)
    query_emb = embed_queries(model, captions, cache_dir, progress=progress)
    similarity = query_emb @ item_emb.T
    return {"text_to_audio": retrieval_metrics(similarity, owners),
            "audio_to_text": audio_to_text_metrics(similarity, owners)}
