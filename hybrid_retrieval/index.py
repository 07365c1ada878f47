"""A persistent search index: a catalogue embedded once by a checkpoint, searched many times.

An index is one safetensors file holding
  embeddings    float32 (n, d), the L2-normalised item embeddings (scores are cosines)
  items         uint8, UTF-8 JSON of every item's id, audio path and metadata text (a tensor
                rather than header metadata: safetensors caps its header at 100 MB, which the
                names and descriptions of a large catalogue can pass)
  approximate   uint8, a serialised FAISS index (IVF or HNSW), only when one was asked for
and, as the file's metadata, a JSON header: the format, the model's identity (its towers'
fingerprint, a hash of all its weights and its config), the checkpoint's path, epoch and
step, how items were embedded, and the approximate index's settings with its measured
recall@10 against exact search.

The file is written beside its target and renamed into place (`hub.atomic_path`), so a reader
finds either the previous complete index or the new complete one, never a half-written file.
Queries must be embedded by the model that embedded the items: `SearchIndex.check_model`
refuses any other.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import soundfile as sf
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.data.clotho import read_metadata_csv  # Clotho's layout for --metadata CSVs too
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.data.registry import DATASETS, load_split
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.hub import atomic_path
from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")

FORMAT = "hybrid_retrieval.index/1"
APPROXIMATE_KINDS = ("ivf", "hnsw")
# Exact search: torch matmul + top-k; FAISS's flat kernel was about as fast for one query at a
# time and 2.5-4x slower for batches of queries (BENCHMARKS.md, "search"). "faiss" is selectable.
EXACT_BACKEND = "torch"
_EXACT_CHUNK = 1 << 18  # items scored at once by the torch backend: bounds the (queries, items) score matrix
_ADD_CHUNK = 1 << 16  # vectors added to a FAISS index per progress-bar step
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")


class SearchIndexError(ValueError):
    """An index that cannot be read, or a model that is not the one the index was built with."""


def load_catalogue(source: str | Path, metadata_csv: str | Path | None = None) -> list[CatalogueItem]:
    """The items to index, from a folder or a dataset split.

    source: a folder, whose audio files (AUDIO_SUFFIXES, searched recursively) become items with
    their path relative to the folder as id; or `DATASET:ROOT:SPLIT` (e.g.
    `synthmusic:data/synthmusic:evaluation`, `clotho:/data/clotho:evaluation`), the split's items
    with the dataset's metadata. metadata_csv: a Clotho-style metadata CSV (a file_name column and
    any of keywords, closed_tags, description), matched to items by id, else by file name; it
    replaces the metadata of the items it names. Files soundfile cannot open are skipped with
    one warning, so a broken file does not stop a long build half way.
    """
    folder = Path(source)
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        items = [CatalogueItem(p.relative_to(folder).as_posix(), p) for p in files]
    else:
        dataset, _, rest = str(source).partition(":")
        root, _, split = rest.rpartition(":")
        if dataset not in DATASETS or not root or not split:
            raise ValueError(f"{source!r} is neither a folder nor a dataset split DATASET:ROOT:SPLIT "
                             f"(DATASET one of {DATASETS}, e.g. synthmusic:data/synthmusic:evaluation)")
        items = load_split(dataset, root, split)
    if metadata_csv is not None:
        table = read_metadata_csv(Path(metadata_csv))
        matched = 0
        for item in items:
            kinds = table.get(item.item_id, table.get(Path(item.item_id).name))
            if kinds is not None:
                item.metadata, matched = kinds, matched + 1
        if matched < len(items):
            log.warning("%s: no metadata row for %d of %d items", metadata_csv, len(items) - matched, len(items))
    opens = [_opens(item.audio_path) for item in items]
    skipped = [item.item_id for item, ok in zip(items, opens) if not ok]
    if skipped:
        log.warning("skipped %d of %d files that cannot be read as audio: %s", len(skipped), len(items),
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return [item for item, ok in zip(items, opens) if ok]


def _opens(path: Path) -> bool:
    """Whether soundfile (what load_audio reads with) can open the file; reads the header only."""
    try:
        sf.info(str(path))
    except Exception:  # soundfile raises LibsndfileError, RuntimeError, TypeError, ...
        return False
    return True


def model_identity(model: RetrievalModel) -> dict:
    """What must match between the model that embedded an index's items and the one that
    embeds its queries: the towers' fingerprint, a hash of every weight (towers and heads)
    and the architecture config."""
    return {"fingerprint": model.fingerprint(), "weights": module_state_hash(model),
            "config": model.config.to_dict()}


def exact_search(embeddings: Tensor, queries: Tensor, k: int, backend: str = EXACT_BACKEND) -> tuple[Tensor, Tensor]:
    """Top-k inner products of each query over all items: (scores, rows), both (n_queries, k).

    backend "torch": matmul and top-k over chunks of items (memory stays at queries x chunk; runs
    where the tensors are, GPU included); "faiss": faiss.knn, the brute-force kernel of
    IndexFlatIP, without copying the items (CPU only).
    """
    k = min(k, embeddings.shape[0])
    queries = queries.to(embeddings.dtype)
    if backend == "faiss":
        scores, rows = faiss.knn(np.ascontiguousarray(queries.numpy()), embeddings.numpy(), k,
                                 metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(scores), torch.from_numpy(rows)
    if backend != "torch":
        raise ValueError(f"exact search backend must be 'torch' or 'faiss', not {backend!r}")
    best_scores, best_rows = [], []
    for start in range(0, embeddings.shape[0], _EXACT_CHUNK):
        scores = queries @ embeddings[start:start + _EXACT_CHUNK].T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores.append(top.values)
        best_rows.append(top.indices + start)
    scores, rows = torch.cat(best_scores, dim=1), torch.cat(best_rows, dim=1)
    top = scores.topk(k, dim=1)
    return top.values, rows.gather(1, top.indices)


def recall_at_k(found: Tensor, truth: Tensor) -> float:
    """Mean share of each row of `truth` (exact top-k rows) that `found` also returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.numel()


def _approximate_search(index: faiss.Index, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    scores, rows = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    return torch.from_numpy(scores), torch.from_numpy(rows)


def build_approximate(embeddings: Tensor, kind: str = "ivf", target_recall: float = 0.95,
                      queries: Tensor | None = None, n_queries: int = 1000, seed: int = 0,
                      progress: bool = True) -> tuple[faiss.Index, dict]:
    """An approximate FAISS index over `embeddings`, tuned to the cheapest search setting whose
    recall@10 against exact search reaches `target_recall` (or the most thorough one tried).

    kind "ivf": an inverted file of round(sqrt(n)) k-means cells (at least 39 training vectors
    each, FAISS's minimum), tuned by nprobe; "hnsw": a 32-link HNSW graph, tuned by efSearch.
    Recall is measured on up to `n_queries` of `queries` (query embeddings: real text queries
    give the honest figure) or, without them, on catalogue items as queries, each one's own
    entry left out of both result lists; items sit closer to each other than text queries sit to
    items, so that figure is optimistic. Returns the index and its settings (with the recall).
    """
    n, dim = embeddings.shape
    if n < 2:
        raise ValueError("an approximate index needs at least 2 items")
    if kind == "ivf":
        cells = max(1, min(round(math.sqrt(n)), n // 39))
        factory, parameter = f"IVF{cells},Flat", "nprobe"
        values = sorted({min(cells, 2 ** i) for i in range(int(math.log2(cells)) + 2)})
    elif kind == "hnsw":
        factory, parameter, values = "HNSW32", "efSearch", [16, 32, 64, 128, 256, 512]
    else:
        raise ValueError(f"approximate index must be one of {APPROXIMATE_KINDS}, not {kind!r}")
    vectors = np.ascontiguousarray(embeddings.float().numpy())
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        log.info("training %s on %d vectors", factory, n)  # one FAISS call (k-means): no progress to show
        index.train(vectors)
    for start in tqdm(range(0, n, _ADD_CHUNK), desc=f"adding to {factory}", unit="chunk", disable=not progress):
        index.add(vectors[start:start + _ADD_CHUNK])

    generator = torch.Generator().manual_seed(seed)
    own = None
    if queries is None:  # catalogue items as queries: ask for one more result and drop the item itself
        own = torch.randperm(n, generator=generator)[:n_queries]
        queries, k, source = embeddings[own], min(10, n - 1), "catalogue items"
    else:
        queries = queries[torch.randperm(len(queries), generator=generator)[:n_queries]]
        k, source = min(10, n), "queries given"
    queries = queries.float()
    ask = k + (own is not None)

    def top(rows: Tensor) -> Tensor:
        if own is None:
            return rows[:, :k]
        return torch.stack([r[r != o][:k] for r, o in zip(rows, own)])

    truth = top(exact_search(embeddings.float(), queries, ask)[1])
    space = faiss.ParameterSpace()
    recall = 0.0
    for value in tqdm(values, desc=f"tuning {parameter}", disable=not progress):
        space.set_index_parameter(index, parameter, value)
        recall = recall_at_k(top(_approximate_search(index, queries, ask)[1]), truth)
        if recall >= target_recall:
            break
    settings = {"kind": kind, "factory": factory, "parameter": parameter, "value": value,
                "recall@10": round(recall, 4), "target_recall": target_recall,
                "recall_queries": {"count": len(queries), "kind": source}}
    return index, settings


@dataclass
class SearchIndex:
    """Embedded catalogue items and how they were made; `search` ranks them for query embeddings."""

    embeddings: Tensor  # (n, d) float32, L2-normalised
    ids: list[str]  # item ids: path relative to the indexed folder, or the dataset's file name
    paths: list[str]  # audio files as indexed (absolute)
    metadata: list[str]  # the metadata text each item was embedded with ("" when none)
    info: dict  # the header: format, model identity, checkpoint, embedding and approximate settings
    approximate: faiss.Index | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def checkpoint(self) -> str:
        """The checkpoint directory the index was built with (where `search` finds its model)."""
        return self.info["checkpoint"]["path"]

    def check_model(self, model: RetrievalModel) -> None:
        """Raise SearchIndexError unless `model` is the one this index's items were embedded by."""
        expected, actual = self.info["model"], model_identity(model)
        if actual == expected:
            return
        parts = [name for name, differs in (
            ("audio tower", actual["fingerprint"].get("audio_state") != expected["fingerprint"].get("audio_state")),
            ("text tower", actual["fingerprint"].get("text_state") != expected["fingerprint"].get("text_state")),
            ("architecture", actual["config"] != expected["config"]),
        ) if differs] or ["projection/fusion weights"]
        raise SearchIndexError(
            f"this index was built with checkpoint {self.checkpoint} (weights sha256 {expected['weights'][:12]}), "
            f"but the model given differs in its {', '.join(parts)} (weights sha256 {actual['weights'][:12]}); "
            f"search with the index's own checkpoint, or rebuild the index with this one")

    def search(self, queries: Tensor, k: int = 10, exact: bool = False) -> tuple[Tensor, Tensor]:
        """Top-k (scores, rows) per query embedding, (n_queries, k) each; approximate when the
        index has an approximate part and `exact` is False (rows of -1 pad missing results)."""
        queries = queries.float()
        if self.approximate is not None and not exact:
            return _approximate_search(self.approximate, queries, min(k, len(self)))
        return exact_search(self.embeddings, queries, k)


def build_index(model: RetrievalModel, items: Sequence[CatalogueItem], checkpoint: dict, *,
                source: str = "", approximate: str | None = None, target_recall: float = 0.95,
                recall_queries: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                window_seconds: float | None = None, progress: bool = True) -> SearchIndex:
    """Embed `items` (with their metadata of the model's kinds, for hybrid models) into an index.

    checkpoint: {"path", "epoch", "step"} of the checkpoint `model` was loaded from (recorded so
    `search` can find the model again); approximate: None (exact only), "ivf" or "hnsw", tuned
    on `recall_queries` (text), else on up to 1000 of the items' captions (dataset splits have
    them), else on catalogue items as queries (see build_approximate).
    """
    if not items:
        raise ValueError("nothing to index: the catalogue has no items")
    kinds = model.config.metadata if model.uses_metadata else ""
    metadata = [item.metadata_text(kinds) if kinds else "" for item in items]
    if kinds and not any(metadata):
        log.warning("the checkpoint fuses %r metadata but no item has any: items are embedded from audio alone",
                    kinds)
    paths = [str(Path(item.audio_path).resolve()) for item in items]
    embeddings = embed_catalogue(model, paths, metadata if kinds else None, cache_dir,
                                 window_seconds=window_seconds, progress=progress)
    info = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source,
            "size": len(items), "dim": embeddings.shape[1], "model": model_identity(model),
            "checkpoint": checkpoint, "embedding": {"metadata_kinds": kinds, "window_seconds": window_seconds},
            "approximate": None}
    index = None
    if approximate:
        texts = list(recall_queries or [caption for item in items for caption in item.captions])
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:1000].tolist()
        queries = embed_queries(model, [texts[i] for i in order], progress=False) if texts else None
        index, info["approximate"] = build_approximate(embeddings, approximate, target_recall, queries,
                                                       progress=progress)
    return SearchIndex(embeddings, [item.item_id for item in items], paths, metadata, info, index)


def save_index(index: SearchIndex, path: str | Path) -> Path:
    """Write `index` to the file `path` atomically: a crash leaves any previous file untouched."""
    items = json.dumps({"ids": index.ids, "paths": index.paths, "metadata": index.metadata})
    tensors = {"embeddings": index.embeddings.float().contiguous(),
               "items": torch.frombuffer(bytearray(items.encode("utf-8")), dtype=torch.uint8)}
    if index.approximate is not None:
        tensors["approximate"] = torch.from_numpy(faiss.serialize_index(index.approximate))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"index": json.dumps(index.info)})
    return path


def load_index(path: str | Path) -> SearchIndex:
    """Read an index written by `save_index`; SearchIndexError if there is none or it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SearchIndexError(f"no index at {path} (build one with `hybrid-retrieval index build`)")
    try:
        with safe_open(str(path), "pt") as handle:
            header = (handle.metadata() or {}).get("index")
            info = json.loads(header) if header else {}
            if info.get("format") != FORMAT:
                raise SearchIndexError(f"{path} is not a hybrid_retrieval index (format {info.get('format')!r}, "
                                       f"expected {FORMAT!r})")
            items = json.loads(bytes(handle.get_tensor("items").numpy()).decode("utf-8"))
            embeddings = handle.get_tensor("embeddings")
            approximate = None
            if "approximate" in handle.keys():
                approximate = faiss.deserialize_index(handle.get_tensor("approximate").numpy())
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise SearchIndexError(f"{path} is not a readable index: {exc}") from exc
    return SearchIndex(embeddings, items["ids"], items["paths"], items["metadata"], info, approximate)
