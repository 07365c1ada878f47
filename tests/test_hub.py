"""Output locations and atomic writes: checked before the work, one error when a write fails,
no litter after a kill, no moment without a complete folder, the user's umask, trust on first use."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import dead_pid, read_only
from safetensors import SafetensorError

from hybrid_retrieval import hub, tensorfile
from hybrid_retrieval.audio import pretrained
from hybrid_retrieval.errors import IncompatibleModelError
from hybrid_retrieval.hub import UnwritableError, atomic_directory, atomic_path, check_writable, save_or_rescue

ROOT = Path(__file__).resolve().parents[1]


def test_check_writable_refuses_what_cannot_take_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_writable(tmp_path / "x.index") == tmp_path / "x.index"
    assert check_writable(tmp_path / "new" / "deeper", directory=True)  # folders are created later, parents too
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UnwritableError, match=r"cannot write .*missing/x.index: its folder .*missing does not exist"):
        check_writable(tmp_path / "missing" / "x.index")
    (tmp_path / "file").write_text("")
    with pytest.raises(UnwritableError, match="is not a folder"):
        check_writable(tmp_path / "file" / "x.index")
    with pytest.raises(UnwritableError, match="it is a folder, not a file"):
        check_writable(tmp_path)
    with pytest.raises(UnwritableError, match="exists and is not a folder"):
        check_writable(tmp_path / "file", directory=True)
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        for target, directory in ((locked / "x.index", False), (locked / "a" / "b", True)):
            with pytest.raises(UnwritableError, match=f"{locked} does not take new files"):
                check_writable(target, directory=directory)
    # a full disk: what shutil.disk_usage reports is all the check reads
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(total=100, used=100, free=0))
    with pytest.raises(UnwritableError, match="only 0.0 MB free .* the disk is full"):
        check_writable(tmp_path / "x.index")
    with pytest.raises(UnwritableError, match="about 5.0 MB needed"):
        hub.check_space(tmp_path / "x.index", tmp_path, 5_000_000)


def test_a_full_disk_during_a_write_is_one_error_and_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(UnwritableError, match=f"cannot write {target}: No space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # safetensors reports the same as a SafetensorError without an errno
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(tensorfile, "save_file", full)
    with pytest.raises(UnwritableError, match=f"cannot write {target}: safetensors could not write it"):
        tensorfile.save_tensor_file(target, {"x": torch.zeros(3)}, {"format": "test"})
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary


def test_outputs_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        tensorfile.save_tensor_file(tmp_path / "a.index", {"x": torch.zeros(3)}, {"format": "test"})
        hub.write_atomic(tmp_path / "b.txt", b"text")
        with atomic_directory(tmp_path / "model") as folder:
            tensorfile.write_safetensors({"x": torch.zeros(3)}, folder / "model.safetensors")
            (folder / "sub").mkdir()
    finally:
        os.umask(old)
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.index") == mode(tmp_path / "b.txt") == 0o640  # not mkstemp's 0600
    assert mode(tmp_path / "model") == mode(tmp_path / "model" / "sub") == 0o750  # not mkdtemp's 0700
    assert mode(tmp_path / "model" / "model.safetensors") == 0o640


def test_a_folder_is_replaced_without_a_moment_of_absence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as folder:
        (folder / "version").write_text("1")
    seen = []
    real_rmtree = shutil.rmtree

    def watching_rmtree(path, *args, **kwargs):  # while the old folder is deleted, the new one is in place
        seen.append((target / "version").read_text() if (target / "version").is_file() else None)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(hub.shutil, "rmtree", watching_rmtree)
    with atomic_directory(target) as folder:
        (folder / "version").write_text("2")
    assert seen == ["2"] and (target / "version").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    crash = (
        "import os, sys\n"
        "from hybrid_retrieval.hub import atomic_path, atomic_directory\n"
        "with atomic_directory(sys.argv[1] + '/checkpoints/epoch-0002') as tmp:\n"
        "    (tmp / 'model.safetensors').write_bytes(b'half')\n"
        "    with atomic_path(sys.argv[1] + '/x.index') as half:\n"
        "        half.write_bytes(b'half')\n"
        "        os._exit(9)  # killed mid-write: no cleanup runs\n"
    )
    result = subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    left = sorted(p.name for p in tmp_path.rglob(".*"))
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left)
    pid = dead_pid()
    # an older folder a kill left renamed aside, with nothing in its place, is put back instead
    aside = tmp_path / "checkpoints" / f".epoch-0001.{pid}.0123abcd.old"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    live = tmp_path / "checkpoints" / f".epoch-0003.{os.getpid()}.0123abcd.tmp"  # a live writer's: kept
    live.mkdir()
    hub.write_atomic(tmp_path / "y.txt", b"next run")
    with atomic_directory(tmp_path / "checkpoints" / "epoch-0002") as folder:
        (folder / "config.json").write_text(json.dumps({"epoch": 2}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "y.txt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [live.name, "epoch-0001", "epoch-0002"]
    assert (tmp_path / "checkpoints" / "epoch-0001" / "config.json").read_text() == "{}"


def test_a_result_that_cannot_be_written_is_rescued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    locked = tmp_path / "locked"
    locked.mkdir()
    save = lambda path: hub.write_atomic(path, b"42 embeddings")  # noqa: E731
    with read_only(locked):
        with pytest.raises(UnwritableError, match="the index of 42 items was saved to .*rescued/x") as info:
            save_or_rescue(save, locked / "x.index", "the index of 42 items")
        rescued = list((tmp_path / "cache" / "rescued").iterdir())
        assert len(rescued) == 1 and rescued[0].read_bytes() == b"42 embeddings" and str(rescued[0]) in str(info.value)

        def refuse_all(path):
            raise UnwritableError(path, "No space left on device")

        with pytest.raises(UnwritableError, match="the index of 42 items could not be saved anywhere and is lost"):
            save_or_rescue(refuse_all, locked / "x.index", "the index of 42 items")
    assert save_or_rescue(save, tmp_path / "fine.index", "the index") == tmp_path / "fine.index"


def test_a_download_without_a_known_hash_is_trusted_on_first_use(tmp_path: Path, weights_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    for var in ("HYBRID_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HYBRID_RETRIEVAL_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path))
    source = weights_dir / "mn04_as_mAP_432.pt"
    monkeypatch.setitem(pretrained.PRETRAINED, "mn05_as", pretrained.PretrainedWeights(
        "mn05_as_mAP_443.pt", source.as_uri(), None))  # a local file:// copy stands for the release
    path = pretrained.resolve_weights("mn05_as")
    record = hub.recorded_hash_path(path)
    digest = hub.file_sha256(source)
    assert record.read_text().split() == [digest, "mn05_as_mAP_443.pt"]
    assert "trust on first use" in caplog.text and digest in caplog.text
    assert pretrained.resolve_weights("mn05_as") == path  # unchanged: accepted
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # changed since it was downloaded
    with pytest.raises(IncompatibleModelError, match=f"weights file {path} has sha256 .* it has changed since"):
        pretrained.resolve_weights("mn05_as")


def test_a_training_run_removes_what_killed_runs_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_retrieval.experiments import runs

    monkeypatch.setenv(runs.RUNS_VARIABLE, str(tmp_path))
    pid = dead_pid()
    left = [tmp_path / "3" / "checkpoints" / f".epoch-0002.{pid}.0123abcd.tmp", tmp_path / "4" / f".model.{pid}.89abcdef.tmp"]
    for folder in left:
        (folder / "sub").mkdir(parents=True)
    kept = tmp_path / "3" / "checkpoints" / "epoch-0001"
    kept.mkdir()
    runs.remove_interrupted_writes()
    assert not any(folder.exists() for folder in left) and kept.is_dir()
