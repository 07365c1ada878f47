"""Train a disentangled music-similarity model (conditional similarity network) as a sacred experiment.

    python scripts/train_disentangled.py                              # the proposal: CSN + track regularization
    python scripts/train_disentangled.py with csn                     # without track regularization
    python scripts/train_disentangled.py with unmasked                # one unmasked space, all conditions
    python scripts/train_disentangled.py with specialised             # one specialised model per condition
    python scripts/train_disentangled.py with export_default=True     # also the `similar` command's default
    python scripts/train_disentangled.py with encoder=melcnn epochs=30  # small CNN on log-mels, from scratch

Every key of TrainConfig (hybrid_retrieval/disentangled/training.py) and ModelConfig
(hybrid_retrieval/disentangled/model.py) can be set with `with key=value`, e.g.
`track_weight=0.5 condition_weights.tempo=2.0`. Named configs are the YAML files in
configs/disentangled/. Runs are recorded by a FileStorageObserver under runs/ (override with
HYBRID_RETRIEVAL_RUNS); the model is saved to the run's directory as model/.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
from sacred import Experiment
from sacred.observers import FileStorageObserver

from hybrid_retrieval.disentangled.model import ModelConfig
from hybrid_retrieval.disentangled.training import TrainConfig, split_config, train_disentangled

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "disentangled"

ex = Experiment("disentangled_similarity", save_git_info=False)
ex.add_config({**ModelConfig().to_dict(), **TrainConfig().to_dict()})
for path in sorted(CONFIGS.glob("*.yaml")):
    ex.add_named_config(path.stem, str(path))


@ex.main
def main(_config: dict, _run, condition_weights: dict, label_columns: dict) -> dict:
    # The dicts are named here so that sacred accepts nested keys (condition_weights.tempo=2.0);
    # their values are read from _config with everything else.
    flat = json.loads(json.dumps(_config))  # sacred's read-only containers -> plain data
    model_config, train_config = split_config(flat)
    observer_dirs = [o.dir for o in _run.observers if getattr(o, "dir", None)]
    run_dir = Path(observer_dirs[0]) if observer_dirs else Path(os.environ.get("HYBRID_RETRIEVAL_RUNS", "runs")) / "unobserved"
    return train_disentangled(model_config, train_config, run_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The heads and losses are small: on a shared CPU, one thread beats two that wait on each other.
    torch.set_num_threads(1)
    ex.observers.append(FileStorageObserver(os.environ.get("HYBRID_RETRIEVAL_RUNS", "runs")))
    ex.run_commandline(sys.argv)
