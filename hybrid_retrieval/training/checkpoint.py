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

from hybrid_retrieval.config_base import read_json_object
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError, NotFoundError
from hybrid_retrieval.fingerprint import state_hash
from hybrid_retrieval.hub import atomic_directory, atomic_path
from hybrid_retrieval.model import ModelConfig, RetrievalModel, create_model
from hybrid_retrieval.projection import Projection
from hybrid_retrieval.query_model import QueryModel, query_identity
from hybrid_retrieval.tensorfile import read_safetensors, write_safetensors
from hybrid_retrieval.text.tower import TextTower
from hybrid_retrieval.weights_fit import find_misfit

FROZEN_PREFIXES = {"audio": "audio_tower.", "text": "text_tower."}
# The model config keys that shape each top-level part of the state dict (named when weights do not fit).
CONFIG_KEYS_OF_PART = {"audio_tower": ("audio_encoder", "frontend"), "text_tower": ("text_encoder",),
                       "metadata_tower": ("separate_metadata_encoder", "text_encoder"),
                       "text_proj": ("embed_dim", "projection"),
                       "item_encoder": ("fusion", "fusion_options", "metadata", "embed_dim", "projection"),
                       "log_logit_scale": ("learn_temperature",)}


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
                    frozen: tuple[str, ...] | None = None, metrics: dict | None = None,
                    pointer: bool = True) -> Path:
    """Write checkpoint `directory` atomically. `frozen` names towers ("audio", "text") whose
    weights are unchanged pretrained ones (default: the towers `model.freeze` froze): they are
    stored as fingerprints only. `pointer`: also make it the latest of its folder (`latest.json`
    beside it; an export to a folder of its own leaves it out)."""
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
        write_safetensors(weights, tmp / "model.safetensors", target=directory)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        if state.optimizer is not None:
            tensors, meta = _flatten_optimizer(state.optimizer)
            tensors.update({f"rng.{k}": v for k, v in (state.rng or {}).items()})
            write_safetensors(tensors, tmp / "optimizer.safetensors", target=directory)
            (tmp / "trainer.json").write_text(json.dumps({"optimizer": meta, "scheduler": state.scheduler}))
    if pointer:
        with atomic_path(directory.parent / "latest.json") as latest:
            latest.write_text(json.dumps({"checkpoint": directory.name, "epoch": state.epoch}))
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
            name = read_json_object(pointer).get("checkpoint")
            if not isinstance(name, str) or not name or Path(name).name != name:
                raise BadInputError(f"{pointer} does not name a checkpoint folder beside it (found {name!r})")
            return folder / name
    raise NotFoundError(f"no checkpoint found at {path} (expected a checkpoint directory with config.json "
                            f"and model.safetensors, or a folder with checkpoints/latest.json)")


def read_checkpoint_config(directory: Path) -> tuple[dict, ModelConfig]:
    """config.json of a checkpoint and its model config, checked: BadInputError naming the file and
    the key when it is not JSON, lacks a section or holds a value of the wrong type."""
    path = directory / "config.json"
    config = read_json_object(path, "checkpoint config")
    for section, kind in (("model", dict), ("train", dict), ("frozen_towers", dict), ("epoch", int), ("step", int)):
        if section in config and not isinstance(config[section], kind):
            raise BadInputError(f"{path}: {section!r} must be a JSON {'object' if kind is dict else 'integer'}, "
                                f"not {config[section]!r}")
    if "model" not in config:
        raise BadInputError(f"{path} has no 'model' section (the model config); is it a checkpoint's config.json?")
    unknown = sorted(set(config.get("frozen_towers", {})) - set(FROZEN_PREFIXES))
    if unknown:
        raise BadInputError(f"{path}: unknown frozen tower(s) {unknown}; known: {sorted(FROZEN_PREFIXES)}")
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from exc
    return config, model_config


def _check_fit(directory: Path, model: RetrievalModel, weights: dict[str, torch.Tensor], skip: tuple[str, ...]) -> None:
    misfit = find_misfit(model.state_dict(), weights, skip)
    if misfit is None:
        return
    keys = CONFIG_KEYS_OF_PART.get(misfit.tensor.split(".")[0], ())
    shaped_by = ", ".join(f"{key}={getattr(model.config, key)!r}" for key in keys)
    raise IncompatibleModelError(f"checkpoint {directory}: model.safetensors does not fit its config.json: {misfit}"
                                 + (f"; config.json's model section shapes it with {shaped_by}" if keys else ""))


def _check_frozen(directory: Path, name: str, tower: torch.nn.Module, recorded: dict) -> None:
    actual = tower.fingerprint()
    if actual != recorded:
        raise IncompatibleModelError(f"checkpoint {directory} was trained with a frozen {name} tower {recorded} but the "
                                     f"tower rebuilt here differs ({actual}); point to the same pretrained weights")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    audio_weights: str | None = None) -> tuple[RetrievalModel, dict]:
    """Rebuild the model of a checkpoint; returns (model, config.json contents).

    Frozen towers are rebuilt from their pretrained sources and must match the recorded
    fingerprint, so a checkpoint is never silently combined with different tower weights. A
    damaged or inconsistent checkpoint (config.json, model.safetensors, weights that do not fit
    the config) is refused naming the file and what is wrong.
    """
    directory = find_checkpoint(path)
    config, model_config = read_checkpoint_config(directory)
    frozen = config.get("frozen_towers", {})
    weights = read_safetensors(directory / "model.safetensors")
    train = config.get("train", {})
    model = create_model(model_config, pretrained="audio" in frozen or bool(train.get("audio_pretrained", False)),
                         audio_weights=audio_weights or train.get("audio_weights"))
    for name, recorded in frozen.items():
        _check_frozen(directory, name, model.audio_tower if name == "audio" else model.text_tower, recorded)
    skip = tuple(FROZEN_PREFIXES[name] for name in frozen)
    _check_fit(directory, model, weights, skip)
    model.load_state_dict(weights, strict=False)
    model.freeze(audio="audio" in frozen, text="text" in frozen)
    return model.to(device), config


def check_resumable(path: str | Path) -> Path:
    """The checkpoint a run can be resumed from (`--resume PATH`), checked before a run starts:
    NotFoundError naming PATH when there is none or it holds no optimizer state."""
    directory = find_checkpoint(path)
    if not (directory / "optimizer.safetensors").is_file():
        raise NotFoundError(f"checkpoint {directory} holds no optimizer state; it cannot be resumed")
    return directory


def load_training_state(path: str | Path) -> TrainingState:
    """The optimizer, scheduler and RNG state of a checkpoint, to resume it (NotFoundError if it
    holds none, BadInputError naming the file if it is damaged)."""
    directory = check_resumable(path)
    config, _ = read_checkpoint_config(directory)
    tensors = read_safetensors(directory / "optimizer.safetensors")
    trainer = read_json_object(directory / "trainer.json", "trainer state")
    try:
        rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
        opt = _unflatten_optimizer({k: v for k, v in tensors.items() if not k.startswith("rng.")},
                                   trainer["optimizer"])
        return TrainingState(config["epoch"], config["step"], opt, trainer["scheduler"], rng)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BadInputError(f"checkpoint {directory}: its training state (config.json, trainer.json, "
                            f"optimizer.safetensors) is incomplete or damaged ({exc!r})") from exc


QUERY_PREFIXES = ("text_tower.", "text_proj.")  # the parts of a checkpoint a text query needs


def checkpoint_query_identity(path: str | Path) -> dict:
    """`query_model.query_identity` of a checkpoint, read from its files without building a
    model: the recorded fingerprint of a frozen text tower (`load_query_model` checks it against
    the tower when one is built) or the hash of its saved weights, and the query projection's.
    Reads config.json and only those tensors of model.safetensors."""
    directory = find_checkpoint(path)
    config, model_config = read_checkpoint_config(directory)
    frozen_text = config.get("frozen_towers", {}).get("text")
    weights = read_safetensors(directory / "model.safetensors", QUERY_PREFIXES[1:] if frozen_text else QUERY_PREFIXES)

    def part(prefix: str) -> str:
        tensors = {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}
        if not tensors:
            raise IncompatibleModelError(f"checkpoint {directory}: model.safetensors holds no {prefix}* weights")
        return state_hash(tensors)

    if frozen_text is not None:
        if not isinstance(frozen_text.get("text_state"), str):
            raise BadInputError(f"{directory / 'config.json'}: the frozen text tower's fingerprint has no 'text_state'")
        text_state = frozen_text["text_state"]
    else:
        text_state = part("text_tower.")
    return query_identity(text_state, part("text_proj."), model_config)


def load_query_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[QueryModel, dict]:
    """The text tower and query projection of a checkpoint (no audio tower, no item encoder), as
    `load_checkpoint` would rebuild them (a frozen text tower checked against its fingerprint);
    returns (model in eval mode, config.json contents)."""
    directory = find_checkpoint(path)
    config, model_config = read_checkpoint_config(directory)
    frozen_text = config.get("frozen_towers", {}).get("text")
    weights = read_safetensors(directory / "model.safetensors", QUERY_PREFIXES)
    tower = TextTower(model_config.text_encoder, max_length=model_config.text_max_length,
                      pooling=model_config.text_pooling)
    if frozen_text is not None:
        _check_frozen(directory, "text", tower, frozen_text)
    model = QueryModel(model_config, tower, Projection(tower.embed_dim, model_config.embed_dim, model_config.projection))
    skip = (FROZEN_PREFIXES["text"],) if frozen_text is not None else ()
    _check_fit(directory, model, weights, skip)
    model.load_state_dict(weights, strict=False)
    return model.requires_grad_(False).eval().to(device), config
