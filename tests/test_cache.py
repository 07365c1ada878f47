"""The feature cache: reuse, invalidation by fingerprint, resumption after a kill."""
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
