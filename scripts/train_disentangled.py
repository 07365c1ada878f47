"""Train a disentangled music-similarity model (conditional similarity network) as a sacred experiment.

    python scripts/train_disentangled.py                              # the proposal: CSN + track regularization
    python scripts/train_disentangled.py with csn                     # without track regularization
    python scripts/train_disentangled.py with unmasked                # one unmasked space, all conditions
    python scripts/train_disentangled.py with specialised             # one specialised model per condition
    python scripts/train_disentangled.py with export_default=True     # also the `similar` command's default
    python scripts/train_disentangled.py with encoder=melcnn epochs=30  # small CNN on log-mels, from scratch

Every key of CSNTrainConfig (hybrid_retrieval/disentangled/training.py) and CSNConfig
(hybrid_retrieval/disentangled/model.py) can be set with `with key=value`, e.g.
`track_weight=0.5 condition_weights.tempo=2.0`. Named configs are the YAML files in
configs/disentangled/. Runs are recorded by a FileStorageObserver under runs/ (override with
HYBRID_RETRIEVAL_RUNS); the model is saved to the run's directory as model/.
"""
from __future__ import annotations

import logging
import sys

import torch
from sacred import Experiment

from hybrid_retrieval.disentangled.model import CSNConfig
from hybrid_retrieval.disentangled.training import CSNTrainConfig, split_csn_config, train_disentangled
from hybrid_retrieval.errors import exiting_on_error, run_reporting_errors
from hybrid_retrieval.experiments.config import register_named_configs
from hybrid_retrieval.experiments.runs import plain_config, run_directory, run_experiment

ex = Experiment("disentangled_similarity", save_git_info=False)
ex.add_config({**CSNConfig().to_dict(), **CSNTrainConfig().to_dict()})
register_named_configs(ex, "disentangled")


@ex.main
def main(_config: dict, _run, condition_weights: dict, label_columns: dict) -> dict:
    # The dicts are named here so that sacred accepts nested keys (condition_weights.tempo=2.0);
    # their values are read from _config with everything else.
    with exiting_on_error():
        model_config, train_config = split_csn_config(plain_config(_config))
        return train_disentangled(model_config, train_config, run_directory(_run))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The heads and losses are small: on a shared CPU, one thread beats two that wait on each other.
    torch.set_num_threads(1)
    sys.exit(run_reporting_errors(lambda: run_experiment(ex, sys.argv)))
