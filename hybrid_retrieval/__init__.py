"""hybrid_retrieval: language-based audio retrieval with audio, text and metadata towers.

    from hybrid_retrieval import create_model, load_audio, retrieval_metrics

The names below are imported on first use, so `import hybrid_retrieval` stays cheap (the
command line's `tag` does not load transformers).
"""
from hybrid_retrieval.lazy import lazy_exports

_EXPORTS = {
    "load_audio": "hybrid_retrieval.audio.io",
    "create_audio_tower": "hybrid_retrieval.audio.tower",
    "audioset_labels": "hybrid_retrieval.audio.tower",
    "TextTower": "hybrid_retrieval.text.tower",
    "create_model": "hybrid_retrieval.model",
    "RetrievalModel": "hybrid_retrieval.model",
    "load_retrieval_model": "hybrid_retrieval.models",
    "list_models": "hybrid_retrieval.model",
    "ModelConfig": "hybrid_retrieval.model",
    "ContrastiveLoss": "hybrid_retrieval.losses",
    "retrieval_metrics": "hybrid_retrieval.metrics",
    "load_split": "hybrid_retrieval.data.registry",
    "load_checkpoint": "hybrid_retrieval.training.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
