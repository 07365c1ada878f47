"""Saved similarity models: a directory of safetensors weights and a JSON config, never a pickle.

    model.safetensors   the head's weights (and learned masks); the frozen tower is left out
    config.json         format, model config, training config, metrics, and the feature source's
                        fingerprint (tower spec, front end and a hash of its weights)
The directory is written under a temporary name and renamed into place, so a reader finds the
old model or the new one, never half of one. Loading rebuilds the tower from its released
weights and refuses a tower whose fingerprint differs from the recorded one.

The `similar` command's default model is :func:`default_checkpoint`:
$HYBRID_RETRIEVAL_CACHE/disentangled/model (by default ~/.cache/hybrid_retrieval/...), installed
by `python scripts/train_disentangled.py with export_default=True`.
"""
from __future__ import annotations

import json
from pathlib import Path

from hybrid_retrieval.config_base import read_json_object
from hybrid_retrieval.disentangled.features import FeatureSource, create_source
from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError, NotFoundError
from hybrid_retrieval.fingerprint import fingerprint_hash, module_state_hash
from hybrid_retrieval.hub import atomic_directory, cache_dir
from hybrid_retrieval.tensorfile import read_safetensors, write_safetensors
from hybrid_retrieval.weights_fit import find_misfit

# The CSNConfig keys that shape the head's tensors (named when saved weights do not fit).
SHAPING_KEYS = ("conditions", "embed_dim", "hidden", "masks", "heads", "encoder")

MODEL_FORMAT = "hybrid_retrieval.disentangled/1"
TRAIN_HINT = ("train one with `python scripts/train_disentangled.py with export_default=True` "
              "(installs it as the default), or pass --checkpoint RUN_DIR")


class ModelNotFoundError(NotFoundError):
    """No saved similarity model where one was expected."""


def default_checkpoint() -> Path:
    """Where the `similar` command looks when no checkpoint is given."""
    return cache_dir() / "disentangled" / "model"


def model_fingerprint(model: ConditionalSimilarityNet, source: FeatureSource) -> str:
    """Identity of what embeddings a model makes: its config, weights and feature source."""
    return fingerprint_hash({"config": model.config.to_dict(), "weights": module_state_hash(model),
                             "features": source.fingerprint()})


def save_model(directory: str | Path, model: ConditionalSimilarityNet, source: FeatureSource,
               train_config: dict, metrics: dict | None = None) -> Path:
    """Write a model directory atomically (replacing an older one)."""
    directory = Path(directory)
    config = {"format": MODEL_FORMAT, "model": model.config.to_dict(), "train": train_config,
              "features": source.fingerprint(), "metrics": metrics or {}}
    with atomic_directory(directory) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_safetensors(weights, tmp / "model.safetensors", target=directory)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def find_model(path: str | Path | None = None) -> Path:
    """A model directory from itself or a run directory holding `model/`; None: the default."""
    candidates = [default_checkpoint()] if path is None else [Path(path), Path(path) / "model"]
    for candidate in candidates:
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    if path is None:
        raise ModelNotFoundError(f"no similarity model given and none at the default {candidates[0]}; {TRAIN_HINT}")
    raise ModelNotFoundError(f"no similarity model at {path} (expected config.json and model.safetensors there "
                             f"or in {Path(path) / 'model'}); {TRAIN_HINT}")


def read_model_config(directory: Path) -> tuple[dict, CSNConfig]:
    """config.json of a saved model and its CSNConfig, checked: BadInputError naming the file and
    the key when it is not JSON, of another format, lacks a section or holds a wrong value."""
    path = directory / "config.json"
    config = read_json_object(path, "similarity model config")
    if config.get("format") != MODEL_FORMAT:
        raise BadInputError(f"{directory} is not a similarity model of format {MODEL_FORMAT} (found {config.get('format')})")
    for section in ("model", "train", "features"):
        if not isinstance(config.get(section), dict):
            found = "missing" if section not in config else f"a {type(config[section]).__name__}"
            raise BadInputError(f"{path}: the {section!r} section is {found}, not a JSON object")
    try:
        return config, CSNConfig.from_dict(config["model"])
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from exc


def load_model(path: str | Path | None = None, weights: str | None = None,
               window_seconds: float | None = None) -> tuple[ConditionalSimilarityNet, FeatureSource, dict]:
    """(model in eval mode, its feature source, config.json) of a saved model (None: the default).
    weights: the frozen tower's weights file, if not where they were found in training;
    window_seconds: see TowerTokens. A damaged or inconsistent model directory is refused naming
    the file and what is wrong."""
    directory = find_model(path)
    config, model_config = read_model_config(directory)
    state = read_safetensors(directory / "model.safetensors")
    source = create_source(model_config.encoder, model_config.audio_encoder,
                           weights or config["train"].get("audio_weights"), window_seconds)
    if source.fingerprint() != config["features"]:
        raise IncompatibleModelError(f"{directory} was trained on features {config['features']} but the source rebuilt here "
                         f"differs ({source.fingerprint()}); point to the same pretrained weights")
    model = ConditionalSimilarityNet(model_config, source.dim)
    misfit = find_misfit(model.state_dict(), state)
    if misfit:
        shaped_by = ", ".join(f"{key}={getattr(model_config, key)!r}" for key in SHAPING_KEYS)
        raise IncompatibleModelError(f"{directory}: model.safetensors does not fit its config.json: {misfit}; "
                                     f"config.json's model section shapes it with {shaped_by}")
    model.load_state_dict(state, strict=True)
    return model.eval(), source, config
