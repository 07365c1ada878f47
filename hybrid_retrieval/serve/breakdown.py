"""How much of a result's score came from the audio and how much from the metadata.

A late-fusion item is `u = (1 - w) * a + w * m`, normalised: `a` the projected audio embedding,
`m` the projected metadata embedding (each L2-normalised first with normalize="before", the
default), `w` the fusion weight. A query `q` then scores

    score = q . u / |u| = ((1 - w) * (q . a) + w * (q . m)) / |u|

so the result carries `audio = q . a`, `metadata = q . m` (cosines when the parts are normalised),
`weight = w` and `norm = |u|`, and the page shows which of the two carried the item. The index
stores only the fused `u / |u|`, and `a` cannot be recovered from it and `m` alone (for w > 0.5 two
audio embeddings fit), so `a` and `m` of a result are computed once from its file and metadata
text by the model's own audio tower and metadata encoder, then kept for later queries.

Mid fusion mixes the two inside the item encoder, so its score has no such split: its results say
that they come from audio and metadata together, as content-only and metadata-only indexes say
which one they come from.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_retrieval.audio.io import AudioLoadError
from hybrid_retrieval.modes import eval_mode

if TYPE_CHECKING:
    from hybrid_retrieval.index.search_index import SearchIndex
    from hybrid_retrieval.model import RetrievalModel


class ScoreBreakdown:
    """The `breakdown` of results of `index` (built by `model`): {"source": "audio" | "metadata" |
    "audio+metadata"} and, for late fusion, the two parts of the score."""

    def __init__(self, model: RetrievalModel, index: SearchIndex) -> None:
        self.model, self.index = model, index
        encoder = model.item_encoder
        self.source = "+".join(name for name, used in (("audio", encoder.uses_audio),
                                                       ("metadata", model.uses_metadata)) if used)
        self.late = model.config.fusion == "late"
        self.window_seconds = index.info.get("embedding", {}).get("window_seconds")
        self._parts: dict[int, tuple[Tensor, Tensor | None] | None] = {}  # row -> (a, m or None); None: no audio
        self._lock = threading.Lock()  # the service calls from more than one thread

    def explain(self, query: Tensor, rows: Sequence[int], scores: Sequence[float]) -> list[dict]:
        """One breakdown per result row (`query`: the (d,) query embedding the rows were ranked for)."""
        if not self.late:
            return [{"source": self.source, "fusion": self.model.config.fusion} for _ in rows]
        parts = self._late_parts(rows)
        weight = float(self.model.item_encoder.weight)
        out = []
        for row, score in zip(rows, scores):
            if parts[row] is None:  # its audio file cannot be read now: the score stands alone
                out.append({"source": self.source, "fusion": "late", "score": score})
                continue
            audio, metadata = parts[row]
            fused = audio if metadata is None else (1 - weight) * audio + weight * metadata
            out.append({"source": self.source, "fusion": "late", "weight": weight,
                        "audio": float(query @ audio), "metadata": None if metadata is None else float(query @ metadata),
                        "norm": float(fused.norm())})
        return out

    def _late_parts(self, rows: Sequence[int]) -> dict[int, tuple[Tensor, Tensor | None] | None]:
        from hybrid_retrieval.embedding import embed_audio_files

        with self._lock:
            missing = sorted({row for row in rows if row not in self._parts})
            if missing:
                encoder, normalize = self.model.item_encoder, self.model.item_encoder.normalize == "before"
                with eval_mode(self.model), torch.inference_mode():
                    outputs = embed_audio_files(self.model.audio_tower, [self.index.paths[r] for r in missing],
                                                window_seconds=self.window_seconds)
                    texts = [self.index.metadata[r] for r in missing]
                    metadata = encoder.metadata_proj(self.model.metadata_encoder(texts).embedding) \
                        if any(texts) else None
                    for i, (row, out) in enumerate(zip(missing, outputs)):
                        if isinstance(out, AudioLoadError):
                            self._parts[row] = None
                            continue
                        audio = encoder.audio_proj(out.embedding.reshape(1, -1).to(self.model.device))[0]
                        meta = metadata[i] if texts[i] else None
                        if normalize:
                            audio = torch.nn.functional.normalize(audio, dim=-1)
                            meta = None if meta is None else torch.nn.functional.normalize(meta, dim=-1)
                        self._parts[row] = (audio.float().cpu(), None if meta is None else meta.float().cpu())
            return {row: self._parts[row] for row in rows}
