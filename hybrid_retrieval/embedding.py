"""Embedding whole catalogues and query sets: towers first (optionally cached), then heads.

Tower outputs of frozen towers can be stored in a FeatureCache and reused by training,
evaluation and the search index; the heads (projections, fusion) are cheap and always run.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.audio.io import AudioLoadError
from hybrid_retrieval.audio.reader import DEFAULT_WORKERS, AudioReader
from hybrid_retrieval.audio.runtime import RuntimeTower
from hybrid_retrieval.audio.tower import AudioTower, merge_windows
from hybrid_retrieval.cache import FeatureCache, audio_key
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.model import RetrievalModel, metadata_present
from hybrid_retrieval.modes import eval_mode
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.text.tower import TextTower

log = logging.getLogger("hybrid_retrieval")


def audio_cache(tower: AudioTower, cache_dir: str | Path | FeatureCache | None,
                window_seconds: float | None = None) -> FeatureCache | None:
    """The feature cache of `tower`'s outputs under `cache_dir` (None: no caching). Opening one
    hashes the tower's weights, so callers that go through a catalogue in chunks open it once."""
    if cache_dir is None or isinstance(cache_dir, FeatureCache):
        return cache_dir
    return FeatureCache(cache_dir, {"kind": "audio", "window_seconds": window_seconds, **tower.fingerprint()})


def text_cache(tower: TextTower, cache_dir: str | Path | FeatureCache | None,
               keep_tokens: bool = False) -> FeatureCache | None:
    """As audio_cache, for a text tower (token sequences are kept or not)."""
    if cache_dir is None or isinstance(cache_dir, FeatureCache):
        return cache_dir
    return FeatureCache(cache_dir, {"kind": "text", "keep_tokens": keep_tokens, **tower.fingerprint()})


def embed_audio_files(tower: AudioTower, paths: Sequence[str | Path], batch_size: int = 32,
                      window_seconds: float | None = None, runner: torch.nn.Module | None = None,
                      reader: AudioReader | None = None) -> list[TowerOutput | AudioLoadError]:
    """Tower outputs of audio files, or the AudioLoadError (naming the file) of each file that
    cannot be used; the other files are embedded all the same. With `window_seconds`, a longer
    file is read window by window (`io.audio_windows`) and its windows' outputs merged, so memory
    holds a window and the outputs, not the file. `reader`: an AudioReader (of the same window)
    whose worker processes or thread read the files ahead of the tower; without one they are read
    here, one window at a time. Either way the tower sees the same pieces in the same order. A
    reader with features (`audio_reader` gives one to a tower whose backbone runs in a runtime)
    hands out log-mels, and the tower runs its backbone alone on them, on the threads the reader
    leaves (`AudioReader.backbone_threads`)."""
    window = tower.window_samples(window_seconds)
    source = reader if reader is not None else AudioReader([], window, tower.sample_rate)
    if source.window != window or source.sample_rate != tower.sample_rate:
        raise BadInputError(f"the reader cuts {source.window}-sample windows at {source.sample_rate} Hz, the tower "
                         f"needs {window} at {tower.sample_rate} Hz")
    failures: dict[int, AudioLoadError] = {}
    runner = runner if runner is not None else tower.inference_runner()  # before the thread count changes
    with source.backbone_threads() as threads:
        per_file = tower.embed_windows(source.pieces(paths, failures), len(paths), batch_size, runner=runner,
                                       log_mels=source.features is not None, backbone_threads=threads)
    return [failures[i] if i in failures else merge_windows(outs) for i, outs in enumerate(per_file)]


def audio_reader(tower: AudioTower, paths: Sequence[str | Path], cache: FeatureCache | None,
                 window_seconds: float | None, workers: int = DEFAULT_WORKERS,
                 progress: tqdm | None = None) -> AudioReader:
    """An AudioReader of the files of `paths` that `cache` does not hold (all without a cache),
    in order: what `audio_outputs` will ask the tower for. For a tower whose backbone runs in a
    runtime (on a CPU), the reader computes the log-mels too (`RuntimeTower.log_mels`)."""
    todo = range(len(paths)) if cache is None else cache.missing("audio", [audio_key(p) for p in paths])
    runner = tower.inference_runner()
    return AudioReader([paths[i] for i in todo], tower.window_samples(window_seconds), tower.sample_rate,
                       workers=workers, progress=progress,
                       features=runner.log_mels if isinstance(runner, RuntimeTower) else None)


def audio_outputs(tower: AudioTower, paths: Sequence[str | Path], cache_dir: str | Path | FeatureCache | None = None,
                  batch_size: int = 32, window_seconds: float | None = None, progress: bool = True,
                  workers: int = DEFAULT_WORKERS, reader: AudioReader | None = None) -> list[TowerOutput | None]:
    """Tower outputs of audio files (whole clips, or averaged windows), through the cache if given
    (a folder, or a cache opened by audio_cache with the same window_seconds). A file that cannot
    be used (missing, not audio, empty, no finite sample) gets None and one warning naming it;
    the others are computed and cached all the same (see `embed_audio_files`). The files to
    compute are decoded by `workers` processes (0: this one) while the tower runs, or by `reader`
    (`audio_reader`) when the caller goes through a larger catalogue in parts."""
    cache = audio_cache(tower, cache_dir, window_seconds)
    with contextlib.nullcontext(reader) if reader is not None else \
            audio_reader(tower, paths, cache, window_seconds, workers) as source:

        def compute(positions: Sequence[int]) -> list[TowerOutput | None]:
            outputs = embed_audio_files(tower, [paths[i] for i in positions], batch_size, window_seconds,
                                        reader=source)
            for out in outputs:
                if isinstance(out, AudioLoadError):
                    log.warning("skipping: %s", out)
            return [None if isinstance(out, AudioLoadError) else out for out in outputs]

        if cache is None:
            return compute(range(len(paths)))
        return cache.get_or_compute("audio", [audio_key(p) for p in paths], compute, progress=progress)


def require_outputs(outputs: Sequence[TowerOutput | None], paths: Sequence[str | Path]) -> list[TowerOutput]:
    """`outputs` of `audio_outputs` for callers that need every file: BadInputError naming the
    files that could not be used (their warnings say why; the other files stay cached). Callers
    that load catalogues or training data drop such files first (`data.catalogue.usable_items`)."""
    unusable = [str(path) for path, out in zip(paths, outputs, strict=True) if out is None]
    if unusable:
        raise BadInputError(f"{len(unusable)} audio file(s) cannot be embedded: {', '.join(unusable[:3])}"
                            f"{' ...' if len(unusable) > 3 else ''}")
    return list(outputs)  # type: ignore[arg-type]


def text_outputs(tower: TextTower, texts: Sequence[str], cache_dir: str | Path | FeatureCache | None = None,
                 batch_size: int = 256, keep_tokens: bool = False, progress: bool = True) -> list[TowerOutput]:
    """Tower outputs of texts in eval mode; with keep_tokens=False only the pooled embedding is kept.
    cache_dir: a folder, or a cache opened by text_cache with the same keep_tokens.

    Texts are batched in order of length (as sentence-transformers' `encode` does), so a batch
    pads its texts to a similar length; the outputs come back in the order of `texts`."""

    @torch.inference_mode()
    def compute(positions: Sequence[int]) -> list[TowerOutput]:
        order = sorted(range(len(positions)), key=lambda j: len(texts[positions[j]]))
        outs: list[TowerOutput | None] = [None] * len(positions)
        with eval_mode(tower):
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                out = tower([texts[positions[j]] for j in chunk]).to("cpu")
                if keep_tokens:
                    singles = out.unbatch()
                else:
                    present = torch.ones(1, 1, dtype=torch.bool)
                    singles = [TowerOutput(e[None, None], present, e[None]) for e in out.embedding]
                for j, single in zip(chunk, singles):
                    outs[j] = single
        return outs  # type: ignore[return-value]

    cache = text_cache(tower, cache_dir, keep_tokens)
    if cache is None:
        return compute(range(len(texts)))
    return cache.get_or_compute("text", list(texts), compute, keep_tokens=keep_tokens, progress=progress)


@torch.inference_mode()
def item_embeddings(model: RetrievalModel, audio: Sequence[TowerOutput] | None,
                    metadata: Sequence[TowerOutput] | None = None, present: Tensor | None = None,
                    batch_size: int = 256) -> Tensor:
    """(n_items, embed_dim) normalised item embeddings from per-item tower outputs."""
    device = model.device
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
    device = model.device
    out = []
    for start in range(0, len(text), batch_size):
        batch = TowerOutput.collate(text[start:start + batch_size]).to(device)
        out.append(model.embed_queries(batch).cpu())
    return torch.cat(out)


def embed_catalogue(model: RetrievalModel, paths: Sequence[str | Path], metadata: Sequence[str] | None = None,
                    cache_dir: str | Path | None = None, window_seconds: float | None = None,
                    progress: bool = True, chunk_size: int = 256, workers: int = DEFAULT_WORKERS) -> Tensor:
    """Normalised item embeddings of audio files (fused with their metadata for hybrid models).
    A file that cannot be used raises BadInputError naming it (the files before it stay cached);
    catalogues and training data check their files first (`io.usable_audio`).

    Items go through the towers and the heads `chunk_size` at a time, so memory holds one
    chunk's audio and tower outputs besides the (n, d) result, whatever the catalogue's size.
    The audio files are decoded and resampled by `workers` processes (`audio.reader`; 0: this
    one), ahead of the audio tower and across chunks. One progress bar counts the files, with
    their rate and the time left.
    """
    chunks = [range(start, min(start + chunk_size, len(paths))) for start in range(0, len(paths), chunk_size)]
    parts = list(embed_catalogue_chunks(model, paths, chunks, metadata, cache_dir, window_seconds, progress, workers))
    return torch.cat([torch.empty(0, model.config.embed_dim), *parts])


def embed_catalogue_chunks(model: RetrievalModel, paths: Sequence[str | Path], chunks: Sequence[range],
                           metadata: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                           window_seconds: float | None = None, progress: bool = True,
                           workers: int = DEFAULT_WORKERS) -> Iterator[Tensor]:
    """The normalised item embeddings of each of `chunks` (ranges of positions into `paths`, in
    increasing order) in turn, as `embed_catalogue` computes them: one audio reader runs ahead
    across all chunks, so a caller can store each chunk's result (a sharded build writes shards)
    while the next chunk's files are being read."""
    with eval_mode(model):
        yield from _embed_chunks(model, paths, chunks, metadata, cache_dir, window_seconds, progress, workers)


def _embed_chunks(model: RetrievalModel, paths: Sequence[str | Path], chunks: Sequence[range],
                  metadata: Sequence[str] | None, cache_dir: str | Path | None, window_seconds: float | None,
                  progress: bool, workers: int) -> Iterator[Tensor]:
    texts = None
    if model.uses_metadata:
        texts = list(metadata) if metadata is not None else [""] * len(paths)
        metadata_tower = model.metadata_encoder
        text_store = text_cache(metadata_tower, cache_dir, keep_tokens=True)
    wanted = [paths[i] for chunk in chunks for i in chunk]
    with tqdm(total=len(wanted), desc="embedding items", unit="file", disable=not progress) as bar, \
            contextlib.ExitStack() as stack:
        reader = None
        if model.item_encoder.uses_audio:
            audio_store = audio_cache(model.audio_tower, cache_dir, window_seconds)
            reader = stack.enter_context(audio_reader(model.audio_tower, wanted, audio_store, window_seconds,
                                                      workers, progress=bar))
        for chunk in chunks:
            chunk_paths = [paths[i] for i in chunk]
            audio = meta = present = None
            read_before = reader.files_read if reader is not None else 0
            if reader is not None:
                audio = require_outputs(audio_outputs(model.audio_tower, chunk_paths, audio_store,
                                                      window_seconds=window_seconds, progress=False, reader=reader),
                                        chunk_paths)
            if texts is not None:
                chunk_texts = [texts[i] for i in chunk]
                meta = text_outputs(metadata_tower, chunk_texts, text_store, keep_tokens=True, progress=False)
                present = metadata_present(chunk_texts)
            read = reader.files_read - read_before if reader is not None else 0
            bar.update(len(chunk) - read)  # the files read were counted as they were read
            yield item_embeddings(model, audio, meta, present) if len(chunk) else torch.empty(0, model.config.embed_dim)


def example_embedding(model: RetrievalModel, clip: str | Path | np.ndarray | Tensor,
                      window_seconds: float | None = None) -> Tensor:
    """(1, embed_dim) normalised embedding of an example clip (a file, or a mono waveform at the
    tower's rate) as a catalogue item without metadata, cut into windows of `window_seconds` as
    the catalogue's files were: the query of a search by example. AudioLoadError naming a file
    that cannot be used; BadInputError for a model whose items ignore their audio."""
    if not model.item_encoder.uses_audio:
        raise BadInputError(f"this checkpoint embeds items from their metadata alone (fusion={model.config.fusion!r}): "
                            "an example clip cannot query it")
    with eval_mode(model):
        if isinstance(clip, (str, Path)):
            out = embed_audio_files(model.audio_tower, [clip], window_seconds=window_seconds)[0]
            if isinstance(out, AudioLoadError):
                raise out
        else:
            out = model.audio_tower.embed_waveforms([clip], window_seconds=window_seconds)[0]
        return item_embeddings(model, [out])


def embed_queries(model: RetrievalModel, texts: Sequence[str], cache_dir: str | Path | None = None,
                  progress: bool = True) -> Tensor:
    """Normalised query embeddings of texts (through the text cache if given)."""
    with eval_mode(model):
        return query_embeddings(model, text_outputs(model.text_tower, texts, cache_dir, progress=progress))

