"""On-disk cache of tower outputs, so frozen towers embed a dataset once.

Layout: `<root>/<fingerprint hash>/{audio,text}/<shard>.safetensors` plus `fingerprint.json`.
The fingerprint is the tower's identity (spec, front-end settings and a hash of its weights),
so changing the model, its weights or a front-end setting starts a new cache. Audio is keyed by
file (resolved path, size, modification time), text by its string. Each shard is written to a
temporary file and renamed, so a run killed half way leaves only complete shards: the next run
reuses them and computes the rest. Each shard carries a sha256 of its keys and tensors in its
metadata; a shard that is truncated or altered on disk is found when read, named in one warning,
deleted and computed again, never read back. Entries whose computation failed (an unusable audio
file) are not stored; the rest of their shard is.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from hybrid_retrieval.fingerprint import fingerprint_hash
from hybrid_retrieval.hub import atomic_path
from hybrid_retrieval.outputs import TowerOutput

CHECKSUM_KEY = "sha256"  # shard metadata entry: shard_checksum of its keys and tensors

log = logging.getLogger("hybrid_retrieval")


def audio_key(path: str | Path) -> str:
    """A file's cache key: resolved path, size and modification time (a file that cannot be
    stat'ed gets a key of its own; computing it fails, and nothing is stored under it)."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|unreadable"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class FeatureCache:
    """Sharded store of single-example TowerOutputs under one tower fingerprint."""

    def __init__(self, root: str | Path, fingerprint: dict, shard_size: int = 256) -> None:
        self.fingerprint = fingerprint
        self.dir = Path(root) / fingerprint_hash(fingerprint)
        self.shard_size = shard_size
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "fingerprint.json"
        if not marker.exists():
            with atomic_path(marker) as tmp:
                tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
        self._indices: dict[str, dict[str, tuple[Path, int]]] = {}  # namespace -> key -> (shard, row)
        self._seen_shards: dict[str, set[Path]] = {}

    def _index(self, namespace: str) -> dict[str, tuple[Path, int]]:
        """Where each stored key lives. Kept between calls, so that a caller going through a large
        catalogue chunk by chunk reads each shard's header once; shards that appeared since
        (this or another process) are added on every call. A shard whose header cannot be read
        is deleted (see `_discard`)."""
        index = self._indices.setdefault(namespace, {})
        seen = self._seen_shards.setdefault(namespace, set())
        for shard in sorted(set((self.dir / namespace).glob("*.safetensors")) - seen):
            seen.add(shard)
            try:
                with safe_open(str(shard), "pt") as handle:
                    keys = json.loads((handle.metadata() or {})["keys"])
            except FileNotFoundError:  # deleted by another process since the glob
                continue
            except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
                self._discard(namespace, shard, f"unreadable header: {exc}")
                continue
            for i, key in enumerate(keys):
                index[key] = (shard, i)
        return index

    def _discard(self, namespace: str, shard: Path, reason: str) -> None:
        """Delete a damaged shard, with one warning naming it, and forget its keys: they are
        computed again when asked for. A damaged shard is never read back, and never fatal."""
        log.warning("feature cache shard %s is damaged (%s): deleted, its entries are computed again", shard, reason)
        shard.unlink(missing_ok=True)
        index = self._indices.get(namespace, {})
        for key in [key for key, (where, _) in index.items() if where == shard]:
            del index[key]

    def _load(self, namespace: str, shard: Path) -> dict[str, Tensor] | None:
        """A shard's tensors if its checksum holds; otherwise it is discarded and None returned."""
        try:
            with safe_open(str(shard), "pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError) as exc:
            self._discard(namespace, shard, f"unreadable: {exc}")
            return None
        if CHECKSUM_KEY not in metadata:
            self._discard(namespace, shard, "no checksum: written by an older version")
            return None
        if metadata[CHECKSUM_KEY] != shard_checksum(metadata.get("keys", ""), tensors):
            self._discard(namespace, shard, "checksum mismatch")
            return None
        return tensors

    def missing(self, namespace: str, keys: Sequence[str]) -> list[int]:
        """The positions of the keys not stored (the first of a repeated key), in order: what
        `get_or_compute` computes, unless a stored shard turns out damaged when it is read."""
        index = self._index(namespace)
        missing, seen = [], set()
        for i, key in enumerate(keys):
            if key not in index and key not in seen:
                seen.add(key)
                missing.append(i)
        return missing

    def get_or_compute(self, namespace: str, keys: Sequence[str],
                       compute: Callable[[Sequence[int]], list[TowerOutput | None]],
                       keep_tokens: bool = True, progress: bool = True) -> list[TowerOutput | None]:
        """Outputs for `keys`; missing ones are computed by `compute(positions)` (positions into
        `keys`) one shard at a time and stored before the next shard starts. Every shard read is
        checked against its checksum; a damaged one is deleted with a warning and its keys are
        computed again. `compute` returns None for a key it could not compute (and says why):
        that key is not stored, its result is None, and the other keys are stored as usual."""
        index = self._index(namespace)
        loaded: dict[Path, dict[str, Tensor]] = {}
        for shard in sorted({index[key][0] for key in keys if key in index}):
            tensors = self._load(namespace, shard)
            if tensors is not None:
                loaded[shard] = tensors
        missing = self.missing(namespace, keys)
        chunks = [missing[s:s + self.shard_size] for s in range(0, len(missing), self.shard_size)]
        for chunk in tqdm(chunks, desc=f"embedding {namespace} ({len(missing)} new)", disable=not progress or not chunks):
            done = [(keys[i], out) for i, out in zip(chunk, compute(chunk), strict=True) if out is not None]
            if done:
                shard, tensors = self._write_shard(namespace, [k for k, _ in done], [o for _, o in done], keep_tokens)
                loaded[shard] = tensors
                self._seen_shards[namespace].add(shard)
                index.update({key: (shard, row) for row, (key, _) in enumerate(done)})
        return self._read(keys, index, loaded)

    def _write_shard(self, namespace: str, keys: list[str], outputs: list[TowerOutput],
                     keep_tokens: bool) -> tuple[Path, dict[str, Tensor]]:
        tensors = {"embedding": torch.cat([o.embedding for o in outputs]).float().contiguous()}
        if keep_tokens:
            tensors["tokens"] = torch.cat([o.tokens[0][o.mask[0]] for o in outputs]).float().contiguous()
            tensors["lengths"] = torch.tensor([int(o.mask[0].sum()) for o in outputs])
        if outputs[0].logits is not None:
            tensors["logits"] = torch.cat([o.logits for o in outputs]).float().contiguous()
        keys_json = json.dumps(keys)
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        target = self.dir / namespace / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"keys": keys_json, CHECKSUM_KEY: shard_checksum(keys_json, tensors)})
        return target, tensors

    @staticmethod
    def _read(keys: Sequence[str], index: dict[str, tuple[Path, int]],
              loaded: dict[Path, dict[str, Tensor]]) -> list[TowerOutput | None]:
        out: list[TowerOutput | None] = [None] * len(keys)
        starts = {shard: torch.cumsum(t["lengths"], 0) - t["lengths"] for shard, t in loaded.items() if "lengths" in t}
        for pos, key in enumerate(keys):
            if key not in index:  # its computation failed
                continue
            shard, row = index[key]
            tensors = loaded[shard]
            emb, logits = tensors["embedding"], tensors.get("logits")
            if "tokens" in tensors:
                length = tensors["lengths"][row]
                tok = tensors["tokens"][starts[shard][row]:starts[shard][row] + length][None]
            else:  # embedding-only entry: the embedding stands in as a one-token sequence
                tok = emb[row][None, None]
            out[pos] = TowerOutput(tok, torch.ones(tok.shape[:2], dtype=torch.bool), emb[row][None],
                                   None if logits is None else logits[row][None])
        return out


def shard_checksum(keys_json: str, tensors: dict[str, Tensor]) -> str:
    """sha256 over a shard's keys and each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(keys_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
