"""`SearchService`: an index with its model (and optionally a similarity model), loaded once, answering
text queries, example clips and "similar in tempo" requests, and describing the index's items.

Text queries go through the index's query encoder (`open_query_encoder`: the cached ONNX export of
the query half where there is one) in batches (`QueryBatcher`); a batch is searched in one call.
Example clips and similarity queries run one at a time in a thread of their own (the audio
tower is the costly part and is not batched). Everything a request names is looked up in the
index: an item is named by its id, and only the index's own audio files are ever opened.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

from hybrid_retrieval.audio.io import AudioLoadError, audio_info
from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.serve.batcher import QueryBatcher
from hybrid_retrieval.serve.breakdown import ScoreBreakdown
from hybrid_retrieval.serve.limits import Limits

if TYPE_CHECKING:
    from hybrid_retrieval.disentangled.search import SimilaritySearch
    from hybrid_retrieval.index.query_encoder import QueryEncoder
    from hybrid_retrieval.index.search_index import SearchIndex
    from hybrid_retrieval.model import RetrievalModel


def item_url(item: str) -> str:
    """The API path of an item (its id percent-encoded; the id's own slashes kept)."""
    return f"/items/{quote(item, safe='/')}"


class SearchService:
    def __init__(self, index: SearchIndex, encoder: QueryEncoder, model: RetrievalModel, limits: Limits = Limits(),
                 similarity: SimilaritySearch | None = None, display: dict[str, dict] | None = None) -> None:
        """display: item id (or file name) -> metadata kinds ("cs", "os" tag lists, "fs" a
        description) shown with the item, e.g. read from a metadata CSV."""
        self.index, self.encoder, self.model, self.limits = index, encoder, model, limits
        self.similarity = similarity
        self.display = display or {}
        self.rows = {item: row for row, item in enumerate(index.ids)}
        self.path_rows = {path: row for row, path in enumerate(index.paths)}
        self.breakdown = ScoreBreakdown(model, index)
        self.text = QueryBatcher(self._answer_texts, limits.max_batch)
        self._audio = ThreadPoolExecutor(1, thread_name_prefix="audio-queries")

    @classmethod
    def open(cls, index: str | Path, *, checkpoint: str | None = None, similar: str | None = None,
             similar_checkpoint: str | None = None, metadata: str | Path | None = None, limits: Limits = Limits(),
             device: str = "auto") -> SearchService:
        """Load an index file, its model (or `checkpoint`'s, checked against it), its query
        encoder and, with `similar`, a similarity model (`open_similarity`); `metadata`: a
        metadata CSV (Clotho layout) whose tags and descriptions are shown with the items."""
        from hybrid_retrieval.index.query_encoder import open_query_encoder
        from hybrid_retrieval.index.store import load_index
        from hybrid_retrieval.models import load_retrieval_model

        display = None
        if metadata is not None:  # the small inputs first: a mistake there is found before any model loads
            from hybrid_retrieval.data.clotho import read_metadata_csv
            from hybrid_retrieval.terminal import readable_file

            display = read_metadata_csv(readable_file(metadata, "metadata CSV"))
        search_index = load_index(index, require=("model", "checkpoint"))
        similarity = open_similarity(similar, search_index, similar_checkpoint, device) if similar else None
        spec = checkpoint or search_index.checkpoint
        model, _ = load_retrieval_model(spec, device)
        search_index.check_model(model)
        encoder = open_query_encoder(search_index, spec, device, model=model)
        return cls(search_index, encoder, model, limits, similarity, display)

    # -- lifecycle (the app's start-up and shut-down) -----------------------------------------
    def start(self) -> None:
        self.text.start()

    async def stop(self) -> None:
        await self.text.stop()

    # -- queries ------------------------------------------------------------------------------
    async def search_text(self, query: str, top: int = 10) -> list[dict]:
        """The `top` items for a text query, best first (each `describe`d, with score and breakdown)."""
        if not query.strip():
            raise BadInputError("the query is empty")
        self._check_top(top)
        return await self.text.submit((query, top))

    def _answer_texts(self, requests: Sequence[tuple[str, int]]) -> list[list[dict]]:
        queries = self.encoder.encode([query for query, _ in requests])
        scores, rows = self.index.search(queries, max(top for _, top in requests))
        answers = []
        for i, (_, top) in enumerate(requests):
            hits = [(row, score) for row, score in zip(rows[i, :top].tolist(), scores[i, :top].tolist()) if row >= 0]
            parts = self.breakdown.explain(queries[i], [row for row, _ in hits], [score for _, score in hits])
            answers.append([{**self.describe(row), "rank": rank, "score": score, "breakdown": part}
                            for rank, ((row, score), part) in enumerate(zip(hits, parts), 1)])
        return answers

    async def search_audio(self, clip: Path, top: int = 10) -> list[dict]:
        """The `top` items for an example clip (a file the service may read: an upload), best first."""
        self._check_top(top)
        return await asyncio.get_running_loop().run_in_executor(self._audio, self._answer_clip, clip, top)

    def _answer_clip(self, clip: Path, top: int) -> list[dict]:
        try:
            seconds = audio_info(clip).duration
        except AudioLoadError:  # its message names the server's temporary file: not the client's business
            raise BadInputError("the uploaded file is not audio that can be read (wav, flac, ogg, mp3, ...)") from None
        if seconds > self.limits.max_clip_seconds:
            raise BadInputError(f"the uploaded clip is {seconds:.0f} s long; at most "
                                f"{self.limits.max_clip_seconds:.0f} s are accepted")
        scores, rows = self.index.search_audio(self.model, clip, top)
        return [{**self.describe(row), "rank": rank, "score": score, "breakdown": {"source": self.breakdown.source}}
                for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), 1)]

    async def similar(self, item: str, condition: str = "all", top: int = 10) -> list[dict]:
        """The `top` items most similar to `item` in one condition of the similarity model (or "all")."""
        if self.similarity is None:
            raise NotFoundError("no similarity model is loaded (start the server with --similar)")
        self._check_top(top)
        return await asyncio.get_running_loop().run_in_executor(self._audio, self._answer_similar, item, condition, top)

    def _answer_similar(self, item: str, condition: str, top: int) -> list[dict]:
        catalogue = self.similarity.catalogue
        try:
            matches = self.similarity.query_catalogued(self.index.paths[self.row(item)], condition, len(catalogue.paths))
        except NotFoundError:  # its message names the server's file
            raise NotFoundError(f"item {item!r} is not in the similarity catalogue") from None
        rows = [(self.path_rows[m.path], m.score) for m in matches if m.path in self.path_rows][:top]
        return [{**self.describe(row), "rank": rank, "score": score, "condition": condition}
                for rank, (row, score) in enumerate(rows, 1)]

    def _check_top(self, top: int) -> None:
        if not 1 <= top <= self.limits.max_top:
            raise BadInputError(f"top must be between 1 and {self.limits.max_top}, not {top}")

    # -- items --------------------------------------------------------------------------------
    def row(self, item: str) -> int:
        """The index row of an item id (NotFoundError naming it otherwise)."""
        try:
            return self.rows[item]
        except KeyError:
            raise NotFoundError(f"no item {item!r} in the index") from None

    def describe(self, row: int) -> dict:
        """What the API says of an item: id, file name, tags, description, the metadata text it
        was embedded with, and where its metadata and audio are."""
        item = self.index.ids[row]
        name = PurePosixPath(item).name
        kinds = self.display.get(item, self.display.get(name, {}))
        tags = [tag for kind in ("cs", "os") for tag in kinds.get(kind, [])]
        return {"id": item, "file": name, "tags": tags, "description": kinds.get("fs", ""),
                "metadata": self.index.metadata[row], "url": item_url(item), "audio_url": f"{item_url(item)}/audio"}

    def audio_file(self, item: str) -> Path:
        """The audio file of an item of the index (NotFoundError if it is not there now)."""
        path = Path(self.index.paths[self.row(item)])
        if not path.is_file():
            raise NotFoundError(f"the audio file of item {item!r} is missing on the server")
        return path

    def health(self) -> dict:
        similarity = self.similarity
        return {"status": "ok", "items": len(self.index), "checkpoint": str(self.index.checkpoint),
                "fusion": self.model.config.fusion, "source": self.breakdown.source,
                "similar": None if similarity is None else {"conditions": similarity.model.config.conditions + ["all"],
                                                            "items": len(similarity.catalogue.paths)},
                "batching": {"max_batch": self.text.max_batch, "batches": self.text.batches,
                             "queries": self.text.queries, "largest": self.text.largest},
                "limits": vars(self.limits)}


def open_similarity(given: str, index: SearchIndex, checkpoint: str | None = None,
                    device: str = "auto") -> SimilaritySearch:
    """The similarity model of `serve --similar`: a model (or run) directory, whose catalogue is the
    index's audio files, embedded now; or a catalogue file saved by `similar --save-catalog`,
    searched with `checkpoint` (default: the installed default model), which must have made it."""
    from hybrid_retrieval.disentangled.search import Catalogue, SimilaritySearch

    if Path(given).is_file():
        return SimilaritySearch.from_checkpoint(checkpoint, catalog=given, device=device)
    if checkpoint is not None:
        raise BadInputError(f"--similar {given} is a model, not a catalogue file: --similar-checkpoint is not used")
    search = SimilaritySearch.from_checkpoint(given, device=device)
    search.catalogue = Catalogue(search.embed(list(index.paths)), list(index.paths), search.fingerprint)
    return search
