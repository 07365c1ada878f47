"""Checkpoints: round trip, atomic writes, frozen-tower fingerprints."""
import json
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.model import create_model
from hybrid_retrieval.training import checkpoint as ckpt
from hybrid_retrieval.training.checkpoint import TrainingState, find_checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture()
def model(offline_weights: Path):
    torch.manual_seed(0)
    return create_model("mn04_minilm", embed_dim=32).eval()


def test_round_trip_gives_the_same_embeddings(model, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints" / "epoch-0001", model, {"audio_pretrained": True},
                    TrainingState(1, 10), frozen=("audio", "text"))
    loaded, config = load_checkpoint(tmp_path)
    assert config["epoch"] == 1 and config["model"]["embed_dim"] == 32
    wave = torch.randn(2, 32_000) * 0.1
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval().encode_items(wave), model.encode_items(wave))
        torch.testing.assert_close(loaded.encode_text(["a dog barks"]), model.encode_text(["a dog barks"]))
    size = (tmp_path / "checkpoints" / "epoch-0001" / "model.safetensors").stat().st_size
    assert size < 1_000_000  # frozen towers are fingerprints, not weights


def test_interrupted_save_keeps_the_previous_checkpoint(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "epoch-0001", model, {}, TrainingState(1, 5), frozen=("audio", "text"))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder / "epoch-0002", model, {}, TrainingState(2, 10), frozen=("audio", "text"))
    assert find_checkpoint(tmp_path) == folder / "epoch-0001"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001", "latest.json"]


def test_frozen_tower_mismatch_is_refused(model, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c" / "epoch-0001", model, {}, TrainingState(1, 1), frozen=("audio", "text"))
    config = json.loads((path / "config.json").read_text())
    config["frozen_towers"]["audio"]["audio_state"] = "0" * 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="frozen audio tower"):
        load_checkpoint(path)


def test_missing_checkpoint_and_resume_without_state(model, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        find_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "export", model, {}, TrainingState(1, 1), frozen=("audio", "text"))
    with pytest.raises(FileNotFoundError, match="cannot be resumed"):
        ckpt.load_training_state(path)
