"""Weight resolution: explicit path -> $HYBRID_RETRIEVAL_WEIGHTS_DIR -> cache -> download."""
import shutil
from pathlib import Path

import pytest

from hybrid_retrieval.audio import pretrained
from hybrid_retrieval.audio.pretrained import PRETRAINED, WeightsNotFoundError, resolve_weights
from hybrid_retrieval.audio.tower import create_audio_tower
from hybrid_retrieval.hub import OFFLINE_VARIABLES

MN04 = PRETRAINED["mn04_as"]


@pytest.fixture()
def empty_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def test_explicit_path_wins(empty_env: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(tmp_path))
    explicit = weights_dir / MN04.filename
    assert resolve_weights("mn04_as", explicit) == explicit
    with pytest.raises(WeightsNotFoundError, match="not found.*missing.pt"):
        resolve_weights("mn04_as", tmp_path / "missing.pt")


def test_env_dir_before_cache(empty_env: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_env.mkdir(parents=True)
    shutil.copy(weights_dir / MN04.filename, empty_env / MN04.filename)
    assert resolve_weights("mn04_as") == empty_env / MN04.filename
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
    assert resolve_weights("mn04_as") == weights_dir / MN04.filename


def test_offline_and_absent_gives_one_actionable_error(empty_env: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("mn10_as")
    message = str(info.value)
    assert "mn10_as_mAP_471.pt" in message and MN04.url.rsplit("/", 1)[0] in message
    assert str(empty_env) in message and "HYBRID_RETRIEVAL_WEIGHTS_DIR" in message and "offline" in message
    assert not empty_env.exists() or not any(empty_env.iterdir())


def test_unknown_model_name(empty_env: Path) -> None:
    with pytest.raises(ValueError, match="mn99_as"):
        resolve_weights("mn99_as")
    with pytest.raises(ValueError, match="mn99_as"):
        create_audio_tower("efficientat:mn99_as")


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_download_into_cache_is_verified(empty_env: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the network boundary: the release URL is pointed at a local file:// copy."""
    _online(monkeypatch)
    monkeypatch.setitem(PRETRAINED, "mn04_as", pretrained.PretrainedWeights(
        MN04.filename, (weights_dir / MN04.filename).as_uri(), MN04.sha256))
    path = resolve_weights("mn04_as")
    assert path == empty_env / MN04.filename and path.stat().st_size == 4_066_513
    assert [p.name for p in empty_env.iterdir()] == [MN04.filename]  # no temp file left behind


def test_download_with_wrong_hash_leaves_nothing(empty_env: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _online(monkeypatch)
    monkeypatch.setitem(PRETRAINED, "mn04_as", pretrained.PretrainedWeights(
        MN04.filename, (weights_dir / MN04.filename).as_uri(), "0" * 64))
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        resolve_weights("mn04_as")
    assert not empty_env.exists() or not any(empty_env.iterdir())


def test_loading_never_unpickles_objects(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="cannot read weights file.*evil.pt"):
        pretrained.load_state_dict(path)
