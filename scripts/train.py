"""Train a retrieval model as a sacred experiment.

    python scripts/train.py with synthmusic epochs=5
    python scripts/train.py with clotho fusion=late metadata=os data_root=/data/clotho
    python scripts/train.py with synthmusic --resume runs/3          # continue run 3
    torchrun --nproc_per_node 2 scripts/train.py with clotho          # DistributedDataParallel

Every key of TrainConfig (hybrid_retrieval/training/config.py) and ModelConfig
(hybrid_retrieval/model.py) can be set with `with key=value`; model keys left at null come from
the base model config named by `model`. Named configs are the YAML files in configs/
(hybrid_retrieval.experiments.config). Runs are
recorded by a FileStorageObserver under runs/ (override with HYBRID_RETRIEVAL_RUNS).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import fields

from sacred import Experiment

from hybrid_retrieval.distributed import is_main_process
from hybrid_retrieval.errors import BadInputError, exiting_on_error, run_reporting_errors
from hybrid_retrieval.experiments.config import register_named_configs
from hybrid_retrieval.experiments.runs import plain_config, run_directory, run_experiment
from hybrid_retrieval.model import ModelConfig
from hybrid_retrieval.training.checkpoint import check_resumable
from hybrid_retrieval.training.config import TrainConfig, split_config
from hybrid_retrieval.training.loop import train

ex = Experiment("hybrid_retrieval", save_git_info=False)
MODEL_KEYS = {f.name for f in fields(ModelConfig)}
# Model keys default to "unset" (null, or {} for the dict-valued ones, which sacred must see as
# dicts to accept nested keys): unset keys come from the base model config named by `model`.
DICT_KEYS = {k for k, v in ModelConfig().to_dict().items() if isinstance(v, dict)}
ex.add_config({**TrainConfig().to_dict(), **{k: {} if k in DICT_KEYS else None for k in MODEL_KEYS}})
register_named_configs(ex, "retrieval")


@ex.main
def main(_config: dict, _run, fusion_options: dict, frontend: dict) -> dict:
    # The dict-valued keys are named here so sacred accepts nested keys that configs add to them
    # (e.g. fusion_options.mid.width, frontend.n_mels); their values are read from _config.
    with exiting_on_error():
        flat = {k: v for k, v in plain_config(_config).items() if k not in MODEL_KEYS or v not in (None, {})}
        model_config, train_config = split_config(flat)
        return train(model_config, train_config, run_directory(_run))


def _translate_resume(argv: list[str]) -> list[str]:
    """`--resume PATH` -> the config update `resume=PATH` (sacred has no such option), after
    checking that PATH holds a checkpoint to resume."""
    if "--resume" not in argv:
        return argv
    i = argv.index("--resume")
    if i + 1 >= len(argv):
        raise BadInputError("--resume needs a run or checkpoint directory")
    path = argv[i + 1]
    check_resumable(path)
    rest = argv[:i] + argv[i + 2:]
    if "with" not in rest:
        rest.append("with")
    return rest + [f"resume={path}"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main_process = is_main_process() and int(os.environ.get("RANK", "0")) == 0
    sys.exit(run_reporting_errors(lambda: run_experiment(ex, _translate_resume(sys.argv), observed=main_process)))
