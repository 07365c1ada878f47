"""What the sacred scripts share: where a run's files go and the run's config as plain data."""
from __future__ import annotations

import json
import os
from pathlib import Path

from hybrid_retrieval.hub import check_writable, remove_orphans

RUNS_VARIABLE = "HYBRID_RETRIEVAL_RUNS"  # where runs are recorded (default: runs/)


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_VARIABLE, "runs"))


def run_directory(run) -> Path:
    """The folder of a sacred run: its FileStorageObserver's, or runs/unobserved without one."""
    observer_dirs = [o.dir for o in run.observers if getattr(o, "dir", None)]
    return Path(observer_dirs[0]) if observer_dirs else runs_root() / "unobserved"


def plain_config(config) -> dict:
    """sacred's read-only config containers as plain dicts and lists."""
    return json.loads(json.dumps(config))


def observe(experiment) -> None:
    """Record the experiment's runs under runs_root() (a FileStorageObserver), after checking that
    it can be written (UnwritableError naming it before any work otherwise)."""
    from sacred.observers import FileStorageObserver

    check_writable(runs_root(), directory=True)
    experiment.observers.append(FileStorageObserver(str(runs_root())))


def run_experiment(experiment, argv: list[str], observed: bool = True) -> int:
    """A sacred script's command line: record runs under runs_root() when `observed` (the output
    location is checked before anything runs), then run. Wrap the call in
    `errors.run_reporting_errors`, and a run's main body in `errors.exiting_on_error`, so that the
    project's errors print as one line instead of sacred's traceback."""
    if observed:
        observe(experiment)
        remove_interrupted_writes()
    experiment.run_commandline(argv)
    return 0


def remove_interrupted_writes() -> None:
    """Remove what killed runs under runs_root() left half-written (checkpoint folders, saved
    models): the temporaries of their atomic writes, whose processes no longer run."""
    for folder in [*runs_root().glob("*/checkpoints"), *runs_root().glob("*")]:
        if folder.is_dir():
            remove_orphans(folder)
