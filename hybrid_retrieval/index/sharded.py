"""Building one index on several processes (torchrun), resumable shard by shard.

    torchrun --nproc_per_node 4 -m hybrid_retrieval.cli index build AUDIO_DIR --checkpoint C --out OUT

`index build` under torchrun (WORLD_SIZE > 1) calls `build_index_sharded` on every rank. Rank 0
loads the catalogue (so each bad file is warned about once) and sends it to the others. The
catalogue is cut into shards of `shard_items` consecutive items; the shards not done yet are dealt
out to the ranks in turn, and each rank embeds its shards as one stream (`embed_catalogue_chunks`:
its audio reader runs ahead across shards) and writes each shard, when complete, atomically to
`OUT.shards/shard-NNNNNN.safetensors` (the shard's embeddings and a key: the model's weights
hash, the embedding settings, and each item's id, path, file size and modification time and
metadata text). When every rank is done, rank 0 reads the shards in catalogue order and builds
the index as one process would (`assemble_index`); the command line then writes OUT and deletes
the shard folder.

A run that is killed (a rank crashed, the job was stopped) leaves its finished shards: the same
command resumes, keeps every shard whose key matches and embeds only the others (a shard of
another catalogue, checkpoint or setting, or a changed file, is embedded again). The embeddings
equal a one-process build's up to float rounding (different batches of the tower).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from hybrid_retrieval.audio.reader import DEFAULT_WORKERS
from hybrid_retrieval.cache import audio_key
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.search_index import SearchIndex, assemble_index, catalogue_inputs, model_identity
from hybrid_retrieval.tensorfile import load_tensor_file, save_tensor_file

if TYPE_CHECKING:
    from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")

SHARD_FORMAT = "hybrid_retrieval.index-shard/1"
DEFAULT_SHARD_ITEMS = 1024
# How long a rank may wait for the others (a barrier): a whole build's imbalance, not torch's 30 minutes.
SYNC_TIMEOUT = datetime.timedelta(days=7)


def shard_folder(out: str | Path) -> Path:
    """Where the shards of the index `out` are written while it is built."""
    return Path(f"{out}.shards")


def shard_ranges(count: int, shard_items: int) -> list[range]:
    if shard_items < 1:
        raise BadInputError(f"a shard holds at least 1 item, not {shard_items}")
    return [range(start, min(start + shard_items, count)) for start in range(0, count, shard_items)]


def shard_keys(weights: str, items: Sequence[CatalogueItem], paths: Sequence[str], metadata: Sequence[str] | None,
               window_seconds: float | None, ranges: Sequence[range]) -> list[str]:
    """What identifies each shard's embeddings: the model's weights hash, the window length, and
    each item's id, file (path, size, modification time: `cache.audio_key`) and metadata text."""
    keys = []
    for rows in ranges:
        entries = [[items[i].item_id, audio_key(paths[i]), metadata[i] if metadata else ""] for i in rows]
        text = json.dumps({"weights": weights, "window_seconds": window_seconds, "items": entries})
        keys.append(hashlib.sha256(text.encode()).hexdigest())
    return keys


def _shard_path(folder: Path, number: int) -> Path:
    return folder / f"shard-{number:06d}.safetensors"


def _read_shard(folder: Path, number: int, key: str, rows: int) -> Tensor | None:
    """The embeddings of shard `number` if it is there, whole, with `key` and `rows` rows; else None."""
    path = _shard_path(folder, number)
    if not path.is_file():
        return None
    try:
        header, tensors = load_tensor_file(path, SHARD_FORMAT, "index shard")
    except BadInputError as exc:
        log.warning("%s: embedded again", exc)
        return None
    embeddings = tensors.get("embeddings")
    if header.get("key") != key or embeddings is None or embeddings.shape[0] != rows:
        return None
    return embeddings


def done_shards(folder: Path, keys: Sequence[str], ranges: Sequence[range]) -> list[int]:
    """The shards already written with their current key."""
    return [n for n, (key, rows) in enumerate(zip(keys, ranges))
            if _read_shard(folder, n, key, len(rows)) is not None]


def embed_shards(model: RetrievalModel, paths: Sequence[str], metadata: Sequence[str] | None,
                 ranges: Sequence[range], keys: Sequence[str], numbers: Sequence[int], folder: Path, *,
                 cache_dir: str | Path | None = None, window_seconds: float | None = None,
                 workers: int = DEFAULT_WORKERS, chunk_size: int = 256, progress: bool = True) -> None:
    """Embed the shards `numbers` (in order, as one stream) and write each when it is complete."""
    from hybrid_retrieval.embedding import embed_catalogue_chunks

    folder.mkdir(parents=True, exist_ok=True)
    chunks, owner = [], []  # sub-ranges of at most chunk_size, and the shard each belongs to
    for number in numbers:
        rows = ranges[number]
        for start in range(rows.start, rows.stop, chunk_size):
            chunks.append(range(start, min(start + chunk_size, rows.stop)))
            owner.append(number)
    done: list[Tensor] = []
    stream = embed_catalogue_chunks(model, paths, chunks, metadata, cache_dir, window_seconds, progress, workers)
    for position, embeddings in enumerate(stream):
        done.append(embeddings)
        number = owner[position]
        if position + 1 == len(owner) or owner[position + 1] != number:
            save_tensor_file(_shard_path(folder, number), {"embeddings": torch.cat(done)},
                             {"format": SHARD_FORMAT, "key": keys[number], "start": ranges[number].start,
                              "stop": ranges[number].stop})
            done = []


def merge_shards(folder: Path, keys: Sequence[str], ranges: Sequence[range]) -> Tensor:
    """The shards' embeddings in catalogue order (BadInputError naming a shard that is missing
    or not the one expected: written by another build meanwhile)."""
    parts = []
    for number, (key, rows) in enumerate(zip(keys, ranges)):
        embeddings = _read_shard(folder, number, key, len(rows))
        if embeddings is None:
            raise BadInputError(f"{_shard_path(folder, number)} is missing or belongs to another build; "
                                f"run the same command again to embed it")
        parts.append(embeddings)
    return torch.cat(parts)


def build_index_sharded(model: RetrievalModel, items: Sequence[CatalogueItem] | None, checkpoint: dict,
                        out: str | Path, *, source: str = "", approximate: str | None = None,
                        target_recall: float = 0.95, recall_queries: Sequence[str] | None = None,
                        cache_dir: str | Path | None = None, window_seconds: float | None = None,
                        shard_items: int = DEFAULT_SHARD_ITEMS, workers: int = DEFAULT_WORKERS) -> SearchIndex | None:
    """One rank's part of a sharded build (see the module docstring), in a process group that
    torchrun started (`distributed.init_from_env`). `items` and `recall_queries`: rank 0's (the
    others pass None and receive them). Returns the index on rank 0, None on the others."""
    group = dist.new_group(backend="gloo", timeout=SYNC_TIMEOUT)  # CPU messages, also in a NCCL job
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = shard_folder(out)
    plan: list = [None]
    if rank == 0:
        paths, metadata = catalogue_inputs(model, items)
        ranges = shard_ranges(len(items), shard_items)
        identity = model_identity(model)
        keys = shard_keys(identity["weights"], items, paths, metadata, window_seconds, ranges)
        done = done_shards(folder, keys, ranges)
        if done:
            log.info("resuming: %d of %d shards are done", len(done), len(ranges))
        todo = [n for n in range(len(ranges)) if n not in set(done)]
        plan = [(paths, metadata, ranges, keys, todo)]
    dist.broadcast_object_list(plan, src=0, group=group)
    paths, metadata, ranges, keys, todo = plan[0]
    embed_shards(model, paths, metadata, ranges, keys, todo[rank::world], folder, cache_dir=cache_dir,
                 window_seconds=window_seconds, workers=workers, progress=rank == 0)
    dist.barrier(group=group)
    if rank != 0:
        return None
    return assemble_index(model, items, paths, metadata, merge_shards(folder, keys, ranges), checkpoint,
                          source=source, approximate=approximate, target_recall=target_recall,
                          recall_queries=recall_queries, window_seconds=window_seconds, identity=identity)
