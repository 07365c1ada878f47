"""Embedding whole catalogues and query sets: towers first (optionally cached), then heads.

Tower outputs of frozen towers can be stored in a FeatureCache and reused by training,
evaluation and the search index; the heads (projections, fusion) are cheap and always run.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hybrid_retrieval.audio.io import load_audio
from hybrid_retrieval.audio.tower import AudioTower
from hybrid_retrieval.cache import FeatureCache, audio_key
from hybrid_retrieval.model import RetrievalModel
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.text.tower import TextTower


def audio_outputs(tower: AudioTower, paths: Sequence[str | Path], cache_dir: str | Path | None = None,
                  batch_size: int = 32, window_seconds: float | None = None,
                  progress: bool = True) -> list[TowerOutput]:
    """Tower outputs of audio files (whole clips, or averaged windows), through the cache if given."""

    def compute(positions: Sequence[int]) -> list[TowerOutput]:
        waves = [load_audio(paths[i]) for i in positions]
        return tower.embed_waveforms(waves, batch_size=batch_size, window_seconds=window_seconds)

    if cache_dir is None:
        return compute(range(len(paths)))
    fingerprint = {"kind": "audio", "window_seconds": window_seconds, **tower.fingerprint()}
    cache = FeatureCache(cache_dir, fingerprint)
    return cache.get_or_compute("audio", [audio_key(p) for p in paths], compute, progress=progress)


def text_outputs(tower: TextTower, texts: Sequence[str], cache_dir: str | Path | None = None,
                 batch_size: int = 256, keep_tokens: bool = False, progress: bool = True) -> list[TowerOutput]:
    """Tower outputs of texts in eval mode; with keep_tokens=False only the pooled embedding is kept."""

    @torch.inference_mode()
    def compute(positions: Sequence[int]) -> list[TowerOutput]:
        was_training = tower.training
        tower.eval()
        outs: list[TowerOutput] = []
        for start in range(0, len(positions), batch_size):
            chunk = [texts[i] for i in positions[start:start + batch_size]]
            outs.extend(tower(chunk).to("cpu").unbatch())
        tower.train(was_training)
        if not keep_tokens:
            outs = [TowerOutput(o.embedding[:, None], torch.ones(1, 1, dtype=torch.bool), o.embedding) for o in outs]
        return outs

    if cache_dir is None:
        return compute(range(len(texts)))
    fingerprint = {"kind": "text", "keep_tokens": keep_tokens, **tower.fingerprint()}
    cache = FeatureCache(cache_dir, fingerprint)
    return cache.get_or_compute("text", list(texts), compute, keep_tokens=keep_tokens, progress=progress)


@torch.inference_mode()
def item_embeddings(model: RetrievalModel, audio: Sequence[TowerOutput] | None,
                    metadata: Sequence[TowerOutput] | None = None, present: Tensor | None = None,
                    batch_size: int = 256) -> Tensor:
    """(n_items, embed_dim) normalised item embeddings from per-item tower outputs."""
    device = model.log_logit_scale.device
    n = len(audio) if audio is not None else len(metadata)
    out = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        a = TowerOutput.collate(audio[start:stop]).to(device) if audio is not None else None
        m = TowerOutput.collate(metadata[start:stop]).to(device) if metadata is not None else None
        p = present[start:stop].to(device) if present is not None else None
        out.append(model.embed_items(a, m, p).cpu())
    return torch.cat(out)


@torch.inference_mode()
def query_embeddings(model: RetrievalModel, text: Sequence[TowerOutput], batch_size: int = 1024) -> Tensor:
    device = model.log_logit_scale.device
    out = []
    for start in range(0, len(text), batch_size):
        batch = TowerOutput.collate(text[start:start + batch_size]).to(device)
        out.append(model.embed_queries(batch).cpu())
    return torch.cat(out)


def metadata_present(texts: Sequence[str]) -> Tensor:
    return torch.tensor([bool(t.strip()) for t in texts])


def embed_catalogue(model: RetrievalModel, paths: Sequence[str | Path], metadata: Sequence[str] | None = None,
                    cache_dir: str | Path | None = None, window_seconds: float | None = None,
                    progress: bool = True) -> Tensor:
    """Normalised item embeddings of audio files (fused with their metadata for hybrid models)."""
    was_training = model.training
    model.eval()
    audio = None
    if model.item_encoder.uses_audio:
        audio = audio_outputs(model.audio_tower, paths, cache_dir, window_seconds=window_seconds, progress=progress)
    meta = present = None
    if model.uses_metadata:
        texts = list(metadata) if metadata is not None else [""] * len(paths)
        tower = model.metadata_tower if model.metadata_tower is not None else model.text_tower
        meta = text_outputs(tower, texts, cache_dir, keep_tokens=True, progress=progress)
        present = metadata_present(texts)
    emb = item_embeddings(model, audio, meta, present)
    model.train(was_training)
    return emb


def embed_queries(model: RetrievalModel, texts: Sequence[str], cache_dir: str | Path | None = None,
                  progress: bool = True) -> Tensor:
    was_training = model.training
    model.eval()
    emb = query_embeddings(model, text_outputs(model.text_tower, texts, cache_dir, progress=progress))
    model.train(was_training)
    return emb

