"""Where downloaded files live, whether the network may be used, and atomic file writes."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hybrid_retrieval.errors import OfflineError

OFFLINE_VARIABLES = ("HYBRID_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


def offline_switches() -> list[str]:
    """The offline variables set to a true value (1/true/yes/on, as Hugging Face reads them);
    the Hugging Face switches cover this project's own downloads too."""
    return [var for var in OFFLINE_VARIABLES if os.environ.get(var, "").strip().lower() in _TRUE]


def is_offline() -> bool:
    return bool(offline_switches())


def cache_dir() -> Path:
    """The project's cache root: $HYBRID_RETRIEVAL_CACHE, else $XDG_CACHE_HOME/hybrid_retrieval,
    else ~/.cache/hybrid_retrieval."""
    if os.environ.get("HYBRID_RETRIEVAL_CACHE"):
        return Path(os.environ["HYBRID_RETRIEVAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hybrid_retrieval"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    On any error the temporary file is removed, so a half-written file is never read back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(target: str | Path, data: bytes) -> None:
    """Write `data` to `target` through :func:`atomic_path` (temporary file, then rename)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (an older folder
    of that name is removed first). On any error the temporary folder is removed, so a reader
    finds the old complete folder or the new complete one, never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def download(url: str, target: Path, sha256: str | None = None) -> Path:
    """Download `url` to `target` atomically (torch.hub's downloader writes a temp file and
    renames it), verifying the sha256 when one is known. Refuses when offline."""
    if is_offline():
        raise OfflineError(f"offline mode is set (HF_HUB_OFFLINE/HYBRID_RETRIEVAL_OFFLINE); not downloading {url}")
    from torch.hub import download_url_to_file

    target.parent.mkdir(parents=True, exist_ok=True)
    download_url_to_file(url, str(target), hash_prefix=sha256, progress=True)
    return target
