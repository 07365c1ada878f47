"""Checkpoints: safetensors weights + JSON config, plus the state needed to resume exactly.

A checkpoint is a directory `checkpoints/epoch-0003/` holding
  model.safetensors       the model's weights; a frozen pretrained tower is left out and
                          identified by its fingerprint in config.json instead (it is rebuilt
                          from its released weights and checked against the fingerprint)
  config.json             model config, training config, epoch, step, metrics, frozen towers
  optimizer.safetensors   optimizer tensors and RNG state      (absent in export-only checkpoints)
  trainer.json            optimizer param groups, scheduler state
It is written into a temporary directory and renamed into place, and `latest.json` is replaced
last, so an interrupted save is never read back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hybrid_retrieval.errors import BadInputError, IncompatibleModelError, NotFoundError
from hybrid_retrieval.hub import atomic_directory, atomic_path
from hybrid_retrieval.model import ModelConfig, RetrievalModel, create_model

FROZEN_PREFIXES = {"audio": "audio_tower.", "text": "text_tower."}


@dataclass
class TrainingState:
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict | None = None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: str | Path, model: RetrievalModel, train_config: dict, state: TrainingState,
                    frozen: tuple[str, ...] | None = None, metrics: dict | None = None) -> Path:
    """Write checkpoint `directory` atomically. `frozen` names towers ("audio", "text") whose
    weights are unchanged pretrained ones (default: the towers `model.freeze` froze): they are
    stored as fingerprints only."""
    frozen = model.frozen if frozen is None else frozen
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    skip = tuple(FROZEN_PREFIXES[name] for name in frozen)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
    weights = _untie(weights)
    fingerprints = {}
    if "audio" in frozen:
        fingerprints["audio"] = model.audio_tower.fingerprint()
    if "text" in frozen:
        fingerprints["text"] = model.text_tower.fingerprint()
    config = {"model": model.config.to_dict(), "train": train_config, "epoch": state.epoch, "step": state.step,
              "metrics": metrics or {}, "frozen_towers": fingerprints}
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        if state.optimizer is not None:
            tensors, meta = _flatten_optimizer(state.optimizer)
            tensors.update({f"rng.{k}": v for k, v in (state.rng or {}).items()})
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "trainer.json").write_text(json.dumps({"optimizer": meta, "scheduler": state.scheduler}))
    with atomic_path(directory.parent / "latest.json") as pointer:
        pointer.write_text(json.dumps({"checkpoint": directory.name, "epoch": state.epoch}))
    return directory


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (e.g. a shared text tower seen twice)."""
    seen: dict[tuple[int, int], str] = {}
    out = {}
    for key, value in weights.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        out[key] = value.clone() if ident in seen else value
        seen.setdefault(ident, key)
    return out


def frozen_towers(config: dict) -> tuple[str, ...]:
    """The towers ("audio", "text") a checkpoint's config.json records as frozen pretrained ones."""
    return tuple(config.get("frozen_towers", {}))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a `checkpoints/` folder or a run directory (latest)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    for folder in (path, path / "checkpoints"):
        pointer = folder / "latest.json"
        if pointer.is_file():
            return folder / json.loads(pointer.read_text())["checkpoint"]
    raise NotFoundError(f"no checkpoint found at {path} (expected a checkpoint directory with config.json "
                            f"and model.safetensors, or a folder with checkpoints/latest.json)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    audio_weights: str | None = None) -> tuple[RetrievalModel, dict]:
    """Rebuild the model of a checkpoint; returns (model, config.json contents).

    Frozen towers are rebuilt from their pretrained sources and must match the recorded
    fingerprint, so a checkpoint is never silently combined with different tower weights.
    """
    directory = find_checkpoint(path)
    config = json.loads((directory / "config.json").read_text())
    frozen = config.get("frozen_towers", {})
    model_config = ModelConfig.from_dict(config["model"])
    train = config.get("train", {})
    model = create_model(model_config, pretrained="audio" in frozen or bool(train.get("audio_pretrained", False)),
                         audio_weights=audio_weights or train.get("audio_weights"))
    for name, recorded in frozen.items():
        tower = model.audio_tower if name == "audio" else model.text_tower
        actual = tower.fingerprint()
        if actual != recorded:
            raise IncompatibleModelError(f"checkpoint {directory} was trained with a frozen {name} tower {recorded} but the "
                             f"tower rebuilt here differs ({actual}); point to the same pretrained weights")
    weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    skip = tuple(FROZEN_PREFIXES[name] for name in frozen)
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise BadInputError(f"checkpoint {directory} does not fit its model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.freeze(audio="audio" in frozen, text="text" in frozen)
    return model.to(device), config


def load_training_state(path: str | Path) -> TrainingState:
    directory = find_checkpoint(path)
    config = json.loads((directory / "config.json").read_text())
    if not (directory / "optimizer.safetensors").is_file():
        raise NotFoundError(f"checkpoint {directory} holds no optimizer state; it cannot be resumed")
    tensors = load_file(str(directory / "optimizer.safetensors"))
    trainer = json.loads((directory / "trainer.json").read_text())
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    opt = _unflatten_optimizer({k: v for k, v in tensors.items() if not k.startswith("rng.")}, trainer["optimizer"])
    return TrainingState(config["epoch"], config["step"], opt, trainer["scheduler"], rng)
