"""End to end: sacred training -> checkpoint -> resume -> eval, and exact resumption."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.model import ModelConfig
from hybrid_retrieval.training.config import TrainConfig, split_config
from hybrid_retrieval.training.loop import GlobalBatchSampler, train, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_checkpoint_resume_eval(tmp_path: Path, tone_dataset: Path, offline_weights: Path) -> None:
    env = {**os.environ, "HYBRID_RETRIEVAL_RUNS": str(tmp_path / "runs")}
    common = ["scripts/train.py", "with", "synthmusic", "dataset=clotho", f"data_root={tone_dataset}",
              "batch_size=16", f"cache_dir={tmp_path / 'features'}", "progress=False", "lr_head=0.003"]
    _run(common + ["epochs=1"], env)
    first = tmp_path / "runs" / "1"
    assert json.loads((first / "run.json").read_text())["status"] == "COMPLETED"
    assert (first / "checkpoints" / "epoch-0001" / "model.safetensors").is_file()

    _run(common + ["epochs=3", "--resume", str(first)], env)
    second = tmp_path / "runs" / "2"
    saved = json.loads((second / "checkpoints" / "latest.json").read_text())
    config = json.loads((second / "checkpoints" / saved["checkpoint"] / "config.json").read_text())
    assert saved["epoch"] == 3 and config["step"] == 3 * (16 * 5 // 16)  # 80 pairs, batches of 16
    assert config["train"]["resume"] == str(first)
    assert set(config["frozen_towers"]) == {"audio", "text"}  # stored as fingerprints, not weights

    out = _run(["scripts/eval_map10.py", "--checkpoint", str(second), "--dataset", "clotho",
                "--root", str(tone_dataset), "--split", "evaluation", "--json"], env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n_items"] == 8 and result["n_queries"] == 40
    t2a = result["text_to_audio"]
    assert set(t2a) == {"mAP@10", "R@1", "R@5", "R@10"}
    # four sound kinds named in the captions: the trained model must beat chance clearly
    assert t2a["mAP@10"] > result["random"]["mAP@10"] + 0.2


def test_resume_is_exact_when_both_towers_train(tmp_path: Path, tone_dataset: Path, offline_weights: Path) -> None:
    """Stopping after epoch 1 and resuming gives bit-identical weights to an uninterrupted run
    (dropout, SpecAugment, data order and crops all continue from the saved state)."""
    flat = {"dataset": "clotho", "data_root": str(tone_dataset), "limit_items": 8, "batch_size": 8,
            "clip_seconds": 1.0, "freeze_audio": False, "freeze_text": False, "progress": False,
            "cache_dir": None, "eval_every": 0, "embed_dim": 64}
    model_config, straight = split_config({**flat, "epochs": 2})
    train(model_config, straight, tmp_path / "straight")
    _, first = split_config({**flat, "epochs": 1})
    train(model_config, first, tmp_path / "interrupted")
    _, resumed = split_config({**flat, "epochs": 2, "resume": str(tmp_path / "interrupted")})
    train(model_config, resumed, tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "epoch-0002" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "epoch-0002" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("audio_tower.") for k in a)
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_config_split_and_errors() -> None:
    model, train_cfg = split_config({"model": "mn10_minilm", "fusion": "none", "epochs": 3})
    assert isinstance(model, ModelConfig) and model.audio_encoder == "efficientat:mn10_as"
    assert isinstance(train_cfg, TrainConfig) and train_cfg.epochs == 3
    with pytest.raises(ValueError, match="lerning_rate"):
        split_config({"lerning_rate": 1})
    with pytest.raises(ValueError, match="no_such_model"):
        split_config({"model": "no_such_model"})


def test_schedule_warms_up_then_decays_to_min() -> None:
    values = [warmup_cosine(s, 10, 100, 0.01) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    assert warmup_cosine(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_global_batches_do_not_depend_on_process_count() -> None:
    one = list(GlobalBatchSampler(50, 8, seed=3))
    ranks = [list(GlobalBatchSampler(50, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(one) == 6
    for b, batch in enumerate(one):
        assert ranks[0][b] + ranks[1][b] == batch
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(50, 9, seed=0, world=2)


def test_random_audio_tower_is_trained_not_frozen(tmp_path: Path, tone_dataset: Path, caplog) -> None:
    """Offline, a timm tower starts from random weights: freezing it would be meaningless, so it trains."""
    model_config, cfg = split_config({"dataset": "clotho", "data_root": str(tone_dataset), "limit_items": 4,
                                      "batch_size": 4, "epochs": 1, "clip_seconds": 1.0, "progress": False,
                                      "cache_dir": None, "eval_every": 0, "audio_encoder": "timm:resnet18",
                                      "embed_dim": 16})
    with caplog.at_level("WARNING", logger="hybrid_retrieval"):
        result = train(model_config, cfg, tmp_path)
    assert "not pretrained" in caplog.text
    saved = json.loads((Path(result["checkpoint"]) / "config.json").read_text())
    assert set(saved["frozen_towers"]) == {"text"}
    assert any(k.startswith("audio_tower.") for k in load_file(str(Path(result["checkpoint"]) / "model.safetensors")))


def test_validation_of_a_diverged_model_says_which_epoch(tmp_path: Path, tone_dataset: Path,
                                                          offline_weights: Path) -> None:
    """A learning rate that overflows the projection to infinity gives NaN scores: the run stops
    with one error naming the validation, not with meaningless metrics."""
    model_config, cfg = split_config({"dataset": "clotho", "data_root": str(tone_dataset), "limit_items": 8,
                                      "batch_size": 16, "epochs": 1, "lr_head": 1e37, "embed_dim": 16,
                                      "progress": False, "cache_dir": str(tmp_path / "features")})
    with pytest.raises(BadInputError, match="validation after epoch 1: similarity has non-finite scores"):
        train(model_config, cfg, tmp_path / "run")
