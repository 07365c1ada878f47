"""`index build` under torchrun with 2 CPU processes (gloo): each rank embeds its shards, rank 0
merges them into the index one process builds; a build whose rank 1 dies after its first shard
resumes, keeps the finished shards, embeds only the others and ends with the same index."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.cli import main
from hybrid_retrieval.index import load_index
from hybrid_retrieval.model import create_model
from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARD_ITEMS = 3  # 16 clips: shards 0-4 of 3 clips and shard 5 of 1; rank 0 takes 0, 2, 4, rank 1 takes 1, 3, 5

# Runs `hybrid-retrieval` as a torchrun worker, noting each shard a rank writes in $SHARD_LOG, and
# ending rank $CRASH_RANK's process abruptly once it has written its first shard.
HOOK = """
import os, sys
from hybrid_retrieval.index import sharded

original = sharded.save_tensor_file

def save(path, tensors, header):
    result = original(path, tensors, header)
    with open(os.environ["SHARD_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {header['start'] // %d}\\n")
    if os.environ.get("CRASH_RANK") == os.environ["RANK"]:
        os._exit(17)
    return result

sharded.save_tensor_file = save
from hybrid_retrieval.cli import main
sys.exit(main())
""" % SHARD_ITEMS


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tone_dataset: Path, weights_dir: Path) -> dict:
    """A hybrid checkpoint (late fusion of open-set keywords) and the index one process builds of
    the tone dataset's development split with it."""
    root = tmp_path_factory.mktemp("sharded")
    env = {"HYBRID_RETRIEVAL_WEIGHTS_DIR": str(weights_dir), "HYBRID_RETRIEVAL_CACHE": str(root / "cache")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        torch.manual_seed(0)
        model = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=32).eval()
        checkpoint = save_checkpoint(root / "hybrid", model, {"audio_pretrained": True}, TrainingState(1, 1),
                                     frozen=("audio", "text"))
        source = f"clotho:{tone_dataset}:development"
        assert main(["index", "build", source, "--checkpoint", str(checkpoint), "--out", str(root / "one.index"),
                     "--workers", "0"]) == 0
    (root / "hook.py").write_text(HOOK)
    return {"root": root, "env": env, "checkpoint": checkpoint, "source": source}


def _torchrun(setup: dict, out: Path, log: Path, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(setup["root"] / "hook.py"),
               "index", "build", setup["source"], "--checkpoint", str(setup["checkpoint"]), "--out", str(out),
               "--shard-items", str(SHARD_ITEMS), "--workers", "1"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **setup["env"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "SHARD_LOG": str(log), **env})


def _written(log: Path) -> dict[int, str]:
    """shard -> rank that wrote it."""
    if not log.exists():
        return {}
    return {int(shard): rank for rank, shard in (line.split() for line in log.read_text().splitlines())}


def _assert_same_index(built: Path, reference: Path) -> None:
    a, b = load_index(built), load_index(reference)
    assert a.ids == b.ids and a.paths == b.paths and a.metadata == b.metadata
    assert a.metadata[0] == "low, tone, clip0"  # the hybrid items carry their keywords
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=1e-5)
    assert a.info["model"] == b.info["model"] and a.info["embedding"] == b.info["embedding"]


def test_two_ranks_build_the_index_one_process_builds(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "sharded.index"
    result = _torchrun(setup, out, tmp_path / "log")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "indexed 16 items" in result.stdout and result.stdout.count("indexed") == 1  # rank 0 writes the index
    assert _written(tmp_path / "log") == {0: "0", 1: "1", 2: "0", 3: "1", 4: "0", 5: "1"}
    assert not Path(f"{out}.shards").exists()  # merged, then removed
    _assert_same_index(out, setup["root"] / "one.index")


def test_a_build_whose_rank_died_resumes_from_its_finished_shards(setup: dict, tmp_path: Path) -> None:
    out, shards = tmp_path / "resumed.index", Path(f"{tmp_path / 'resumed.index'}.shards")
    crashed = _torchrun(setup, out, tmp_path / "crash.log", CRASH_RANK="1")
    assert crashed.returncode != 0 and not out.exists()
    kept = sorted(int(re.search(r"(\d+)", p.name).group(1)) for p in shards.glob("shard-*.safetensors"))
    before = _written(tmp_path / "crash.log")
    assert 1 in kept and before[1] == "1" and 5 not in kept  # rank 1 died after its first shard
    assert sorted(before) == kept  # only complete shards are there (written atomically) ...
    assert all(p.name.startswith(("shard-", ".shard-")) for p in shards.iterdir())  # ... or hidden temporaries

    resumed = _torchrun(setup, out, tmp_path / "resume.log")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming: {len(kept)} of 6 shards are done" in resumed.stdout + resumed.stderr
    assert sorted(_written(tmp_path / "resume.log")) == sorted(set(range(6)) - set(kept))  # the others only
    _assert_same_index(out, setup["root"] / "one.index")
