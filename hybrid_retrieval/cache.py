"""On-disk cache of tower outputs, so frozen towers embed a dataset once.

Layout: `<root>/<fingerprint hash>/{audio,text}/<shard>.safetensors` plus `fingerprint.json`.
The fingerprint is the tower's identity (spec, front-end settings and a hash of its weights),
so changing the model, its weights or a front-end setting starts a new cache. Audio is keyed by
file (resolved path, size, modification time), text by its string. Each shard is written to a
temporary file and renamed, so a run killed half way leaves only complete shards: the next run
reuses them and computes the rest.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from hybrid_retrieval.fingerprint import fingerprint_hash
from hybrid_retrieval.hub import atomic_path
from hybrid_retrieval.outputs import TowerOutput


def audio_key(path: str | Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
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
        (this or another process) are added on every call."""
        index = self._indices.setdefault(namespace, {})
        seen = self._seen_shards.setdefault(namespace, set())
        for shard in sorted(set((self.dir / namespace).glob("*.safetensors")) - seen):
            with safe_open(str(shard), "pt") as handle:
                keys = json.loads(handle.metadata()["keys"])
            for i, key in enumerate(keys):
                index[key] = (shard, i)
            seen.add(shard)
        return index

    def get_or_compute(self, namespace: str, keys: Sequence[str],
                       compute: Callable[[Sequence[int]], list[TowerOutput]],
                       keep_tokens: bool = True, progress: bool = True) -> list[TowerOutput]:
        """Outputs for `keys`; missing ones are computed by `compute(positions)` (positions into
        `keys`) one shard at a time and stored before the next shard starts."""
        index = self._index(namespace)
        missing, seen = [], set()
        for i, key in enumerate(keys):
            if key not in index and key not in seen:
                seen.add(key)
                missing.append(i)
        chunks = [missing[s:s + self.shard_size] for s in range(0, len(missing), self.shard_size)]
        for chunk in tqdm(chunks, desc=f"embedding {namespace} ({len(missing)} new)", disable=not progress or not chunks):
            outputs = compute(chunk)
            self._write_shard(namespace, [keys[i] for i in chunk], outputs, keep_tokens)
        if chunks:
            index = self._index(namespace)
        return self._read(namespace, keys, index)

    def _write_shard(self, namespace: str, keys: list[str], outputs: list[TowerOutput], keep_tokens: bool) -> None:
        tensors = {"embedding": torch.cat([o.embedding for o in outputs]).float().contiguous()}
        if keep_tokens:
            tensors["tokens"] = torch.cat([o.tokens[0][o.mask[0]] for o in outputs]).float().contiguous()
            tensors["lengths"] = torch.tensor([int(o.mask[0].sum()) for o in outputs])
        if outputs[0].logits is not None:
            tensors["logits"] = torch.cat([o.logits for o in outputs]).float().contiguous()
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        target = self.dir / namespace / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})

    @staticmethod
    def _read(namespace: str, keys: Sequence[str], index: dict[str, tuple[Path, int]]) -> list[TowerOutput]:
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            shard, row = index[key]
            by_shard.setdefault(shard, []).append((pos, row))
        out: list[TowerOutput | None] = [None] * len(keys)
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), "pt") as handle:
                names = set(handle.keys())
                emb = handle.get_tensor("embedding")
                logits = handle.get_tensor("logits") if "logits" in names else None
                if "tokens" in names:
                    tokens, lengths = handle.get_tensor("tokens"), handle.get_tensor("lengths")
                    starts = torch.cumsum(lengths, 0) - lengths
            for pos, row in wanted:
                if "tokens" in names:
                    tok = tokens[starts[row]:starts[row] + lengths[row]][None]
                else:  # embedding-only entry: the embedding stands in as a one-token sequence
                    tok = emb[row][None, None]
                out[pos] = TowerOutput(tok, torch.ones(tok.shape[:2], dtype=torch.bool), emb[row][None],
                                       None if logits is None else logits[row][None])
        return out  # type: ignore[return-value]
