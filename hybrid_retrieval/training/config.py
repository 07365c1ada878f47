"""Training settings, and how a flat experiment config splits into model and training parts.

An experiment config (configs/*.yaml, sacred `with key=value`) is one flat mapping: keys that
are fields of `ModelConfig` (hybrid_retrieval/model.py: audio_encoder, fusion, metadata,
embed_dim, ...) describe the model, keys that are fields of `TrainConfig` below describe the
run. `model` names the base model config the model keys override.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hybrid_retrieval.config_base import StrictConfig, partition_keys
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.model import ModelConfig, get_model_config


@dataclass
class TrainConfig(StrictConfig):
    # data
    dataset: str = "synthmusic"  # clotho | audiocaps | synthmusic | wavcaps
    data_root: str = "data/synthmusic"
    train_split: str = "train"
    val_split: str = "val"
    eval_split: str = "eval"
    limit_items: int | None = None  # use only the first N items of each split (smoke tests)
    # training on several datasets at once: [{name, root, split, weight?}, ...], concatenated
    # (validation stays on dataset/data_root/val_split); None: dataset/data_root/train_split alone.
    # Without weights every pair is equally likely (datasets mix in proportion to their size); with
    # a weight on every entry, dataset d gives a weight_d / sum(weights) share of each epoch's pairs.
    datasets: list[dict] | None = None
    exclude_freesound_ids: str | None = None  # CSV with a sound_id column: training clips to drop
    # model
    model: str = "mn04_minilm"  # base model config (hybrid_retrieval/model_configs/)
    audio_pretrained: bool = True  # load the released audio weights (random init if unavailable)
    audio_weights: str | None = None  # explicit weights file of the audio tower
    freeze_audio: bool = True  # frozen tower: its outputs are computed once and cached
    freeze_text: bool = True
    cache_dir: str | None = ".cache/features"  # feature cache of frozen towers (None: no cache)
    # optimisation: AdamW, linear warm-up then cosine decay to min_lr, per-part learning rates
    epochs: int = 10
    batch_size: int = 64
    lr_audio: float = 2e-5
    lr_text: float = 2e-5
    lr_head: float = 1e-3  # projections, fusion and temperature
    min_lr: float = 1e-7
    warmup_epochs: float = 1.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss: str = "ntxent"  # ntxent | cmc
    clip_seconds: float = 10.0  # training crop of live (non-frozen) audio
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0
    eval_every: int = 1  # validate every N epochs (0: only at the end)
    resume: str | None = None  # run or checkpoint directory to continue from
    progress: bool = True

    def __post_init__(self) -> None:
        if self.datasets is not None:
            self.datasets = [_dataset_entry(entry, i) for i, entry in enumerate(self.datasets)]
            if not self.datasets:
                raise BadInputError("datasets is an empty list; leave it unset to train on `dataset` alone")
            weighted = [("weight" in entry) for entry in self.datasets]
            if any(weighted) and not all(weighted):
                unweighted = [entry["name"] for entry, has in zip(self.datasets, weighted) if not has]
                raise BadInputError(f"datasets: give every entry a weight or none (no weight: {unweighted})")

    def training_datasets(self) -> list[dict]:
        """The training sets as `datasets` entries: `datasets`, else the one of dataset/data_root/train_split."""
        return self.datasets or [{"name": self.dataset, "root": self.data_root, "split": self.train_split}]


_ENTRY_KEYS = {"name", "root", "split"}


def _dataset_entry(entry: object, index: int) -> dict:
    """A `datasets` entry checked: name, root, split, and an optional positive weight."""
    if not isinstance(entry, Mapping):
        raise BadInputError(f"datasets[{index}] is {entry!r}; expected a mapping with keys name, root, split "
                            f"(and optionally weight)")
    entry = dict(entry)
    missing, unknown = _ENTRY_KEYS - set(entry), set(entry) - _ENTRY_KEYS - {"weight"}
    if missing or unknown:
        raise BadInputError(f"datasets[{index}] {entry}: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                            f"expected keys name, root, split (and optionally weight)")
    if "weight" in entry:
        weight = entry["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise BadInputError(f"datasets[{index}] ({entry['name']}): weight must be a positive number, "
                                f"not {weight!r}")
        entry["weight"] = float(weight)
    return entry


def split_config(flat: dict) -> tuple[ModelConfig, TrainConfig]:
    """Split a flat experiment config into (ModelConfig, TrainConfig); unknown keys are an error.
    Model keys left unset come from the base model config named by `model`."""
    model_part, train_part = partition_keys(flat, ModelConfig, TrainConfig)
    train = TrainConfig.from_dict(train_part)
    model = ModelConfig.from_dict({**get_model_config(train.model).to_dict(), **model_part})
    return model, train
