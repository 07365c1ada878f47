"""The feature cache: reuse, invalidation by fingerprint, resumption after a kill, damaged shards."""
import json
import logging
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.audio.frontend import FrontendConfig
from hybrid_retrieval.audio.tower import create_audio_tower
from hybrid_retrieval.cache import FeatureCache
from hybrid_retrieval.embedding import audio_outputs
from hybrid_retrieval.outputs import TowerOutput


def _fake(i: int) -> TowerOutput:
    tokens = torch.full((1, 1 + i % 3, 4), float(i))
    return TowerOutput(tokens, torch.ones(1, 1 + i % 3, dtype=torch.bool), tokens.mean(1), torch.tensor([[float(i)]]))


def test_reuse_and_partial_resume(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(10)]
    computed: list[int] = []

    def compute(positions):
        if len(computed) >= 4:  # the "process" dies in the middle of the second shard
            raise KeyboardInterrupt
        computed.extend(positions)
        return [_fake(i) for i in positions]

    cache = FeatureCache(tmp_path, {"model": "a"}, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute("audio", keys, compute, progress=False)
    assert computed == [0, 1, 2, 3]
    assert not list(cache.dir.glob("audio/.*"))  # no temporary shard left behind

    computed.clear()
    out = FeatureCache(tmp_path, {"model": "a"}, shard_size=4).get_or_compute(
        "audio", keys, lambda p: computed.extend(p) or [_fake(i) for i in p], progress=False)
    assert computed == [4, 5, 6, 7, 8, 9]  # finished shard reused
    for i, o in enumerate(out):
        assert torch.equal(o.tokens, _fake(i).tokens) and torch.equal(o.logits, _fake(i).logits)

    computed.clear()
    FeatureCache(tmp_path, {"model": "a"}).get_or_compute("audio", keys[::-1], lambda p: computed.extend(p) or [], progress=False)
    assert computed == []
    FeatureCache(tmp_path, {"model": "b"}).get_or_compute("audio", keys[:2], lambda p: computed.extend(p) or [_fake(i) for i in p], progress=False)
    assert computed == [0, 1]  # another fingerprint: another cache


def test_audio_cache_follows_weights_and_frontend(tmp_path: Path, tone_dataset: Path, weights_dir: Path) -> None:
    paths = sorted((tone_dataset / "clotho_audio_validation").glob("*.wav"))[:3]
    weights = str(weights_dir / "mn04_as_mAP_432.pt")
    tower = create_audio_tower("efficientat:mn04_as", weights=weights)
    first = audio_outputs(tower, paths, tmp_path, progress=False)
    direct = audio_outputs(tower, paths, None)
    for a, b in zip(first, direct):
        torch.testing.assert_close(a.embedding, b.embedding)
    assert len(list(tmp_path.iterdir())) == 1
    audio_outputs(tower, paths, tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1  # same fingerprint: reused
    other = create_audio_tower("efficientat:mn04_as", weights=weights, frontend=FrontendConfig(n_fft=2048))
    audio_outputs(other, paths, tmp_path, progress=False)
    with torch.no_grad():
        tower.backbone.classifier[-1].bias.add_(1.0)
    audio_outputs(tower, paths, tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 3  # front-end setting and weights both invalidate


def _shards(cache: FeatureCache) -> dict[str, Path]:
    """shard file -> its path, keyed by the first key it holds."""
    from safetensors import safe_open

    out = {}
    for shard in cache.dir.glob("audio/*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            out[json.loads(handle.metadata()["keys"])[0]] = shard
    return out


def test_damaged_shards_are_found_deleted_and_recomputed(tmp_path: Path, caplog) -> None:
    keys = [f"key{i:02d}" for i in range(16)]
    cache = FeatureCache(tmp_path, {"model": "a"}, shard_size=4)
    cache.get_or_compute("audio", keys, lambda p: [_fake(i) for i in p], progress=False)
    shards = _shards(cache)
    assert sorted(shards) == ["key00", "key04", "key08", "key12"]
    truncated, flipped, renamed = shards["key00"], shards["key04"], shards["key08"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor's data
    flipped.write_bytes(bytes(data))
    data = renamed.read_bytes()  # the header still parses, but names another key
    renamed.write_bytes(data.replace(b"key09", b"key99", 1))

    computed: list[int] = []
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        out = FeatureCache(tmp_path, {"model": "a"}, shard_size=4).get_or_compute(
            "audio", keys, lambda p: computed.extend(p) or [_fake(i) for i in p], progress=False)
    warnings = [r.getMessage() for r in caplog.records]
    named = {str(shard): [w for w in warnings if str(shard) in w] for shard in (truncated, flipped, renamed)}
    assert len(warnings) == 3 and all(len(lines) == 1 for lines in named.values())  # one warning per shard
    assert "unreadable" in named[str(truncated)][0] and "checksum mismatch" in named[str(flipped)][0]
    assert "checksum mismatch" in named[str(renamed)][0]
    assert sorted(computed) == list(range(12))  # the three damaged shards' keys, nothing else
    for i, o in enumerate(out):  # what a fresh computation gives
        assert torch.equal(o.tokens, _fake(i).tokens) and torch.equal(o.embedding, _fake(i).embedding)
        assert torch.equal(o.logits, _fake(i).logits)

    caplog.clear()
    computed.clear()
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        FeatureCache(tmp_path, {"model": "a"}, shard_size=4).get_or_compute(
            "audio", keys, lambda p: computed.extend(p) or [_fake(i) for i in p], progress=False)
    assert computed == [] and not caplog.records  # healed


def test_a_shard_without_checksum_is_recomputed(tmp_path: Path, caplog) -> None:
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path, {"model": "a"})
    (cache.dir / "audio").mkdir()
    old = cache.dir / "audio" / "old.safetensors"
    save_file({"embedding": torch.zeros(1, 4)}, str(old), metadata={"keys": json.dumps(["k"])})
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        out = cache.get_or_compute("audio", ["k"], lambda p: [_fake(3)], keep_tokens=False, progress=False)
    assert torch.equal(out[0].embedding, _fake(3).embedding) and not old.exists()
    assert len(caplog.records) == 1 and "no checksum" in caplog.text and str(old) in caplog.text


def test_failed_keys_are_not_stored(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, {"model": "a"}, shard_size=4)
    out = cache.get_or_compute("audio", [f"k{i}" for i in range(6)],
                               lambda p: [None if i % 2 else _fake(i) for i in p], progress=False)
    assert [o is None for o in out] == [False, True, False, True, False, True]
    assert torch.equal(out[4].embedding, _fake(4).embedding)
    computed: list[int] = []
    FeatureCache(tmp_path, {"model": "a"}, shard_size=4).get_or_compute(
        "audio", [f"k{i}" for i in range(6)], lambda p: computed.extend(p) or [_fake(i) for i in p], progress=False)
    assert computed == [1, 3, 5]  # tried again; the others came from complete shards
