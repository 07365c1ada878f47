"""Where downloaded files live, whether the network may be used, atomic file writes, and checks
of an output location before the work that fills it.

Atomic writes go to a temporary beside the target, named `.<target>.<pid>.<random>.tmp`, which is
renamed onto the target when complete: a reader finds the old file (or folder) or the new one,
never half of one. A temporary whose process no longer runs was left by a kill; the next write
into that folder removes it. Outputs get the permissions of any file the user creates (the umask
applies), not the owner-only ones of `tempfile`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hybrid_retrieval.errors import BadInputError, OfflineError

log = logging.getLogger("hybrid_retrieval")

OFFLINE_VARIABLES = ("HYBRID_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
# Refused below this much free space even when an output's size is not known in advance.
MIN_FREE_BYTES = 1 << 20
# errno values of a write that fails because of where it writes (the disk), not of what it writes;
# creating or renaming a file there can also be refused by permissions.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_PLACE_ERRNOS = _DISK_ERRNOS | {errno.EACCES, errno.EPERM}
# `.<name>.<pid>.<random>.tmp`: a temporary being written; `.old`: an older folder being replaced.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<kind>tmp|old)$")
_cleaned: set[Path] = set()


class UnwritableError(BadInputError):
    """An output location that cannot take the output: missing folder, no permission, read-only or
    full disk. `path` is the output, `reason` why it cannot be written."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = Path(path), reason


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


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_writable(path: str | Path, directory: bool = False, need_bytes: int = 0) -> Path:
    """Refuse, before any work, an output location that cannot take the output; returns the path.

    A file's folder must exist; a folder (`directory`) may be created, with its missing parents.
    The folder that would hold the output must take a new file (tried, not guessed from
    permission bits, which root ignores) and have `need_bytes` (at least MIN_FREE_BYTES) free.
    Raises UnwritableError naming the path and the reason.
    """
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != directory:
        raise UnwritableError(path, "it is a folder, not a file" if not directory else "it exists and is not a folder")
    if directory:
        folder = path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise UnwritableError(path, f"{folder} is not a folder")
    else:
        folder = path.parent
        if not folder.is_dir():
            reason = "is not a folder" if folder.exists() else "does not exist"
            raise UnwritableError(path, f"its folder {folder} {reason}")
    try:
        probe = _new_temporary(folder / ".write-check", directory=False)
        probe.unlink()
    except OSError as exc:
        raise UnwritableError(path, f"{folder} does not take new files ({exc.strerror})") from exc
    check_space(path, folder, need_bytes)
    return path


def check_space(path: str | Path, folder: str | Path, need_bytes: int = 0) -> None:
    """Refuse writing `path` into `folder` when its disk has less than `need_bytes` (at least
    MIN_FREE_BYTES) free."""
    free = shutil.disk_usage(folder).free
    if free < max(need_bytes, MIN_FREE_BYTES):
        needed = f"about {_megabytes(need_bytes)} needed" if need_bytes > MIN_FREE_BYTES else "the disk is full"
        raise UnwritableError(path, f"only {_megabytes(free)} free on the disk of {folder}, {needed}")


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temporary(target: Path, directory: bool, kind: str = "tmp") -> Path:
    """Create an empty temporary file or folder beside `target`, named after it and this process."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"
        try:
            if directory:
                os.mkdir(tmp)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, but another user's
        return True
    return True


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the temporaries of atomic writes into `folder` whose process no longer runs (left by
    a kill); returns what was removed. A live writer's temporary is never touched, and an older
    folder that a kill left renamed aside, with nothing in its place, is put back."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMPORARY.match(entry.name)
            if match and not _running(int(match["pid"])):
                path = Path(entry.path)
                with contextlib.suppress(OSError):
                    original = path.with_name(match["name"])
                    if match["kind"] == "old" and not original.exists():
                        os.replace(path, original)
                    elif entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def _prepare(target: Path) -> None:
    """The target's folder exists and is rid of orphaned temporaries (once per process)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritableError(target, f"cannot create its folder {target.parent} ({exc.strerror})") from exc
    if target.parent not in _cleaned:
        remove_orphans(target.parent)
        _cleaned.add(target.parent)


def _publish_permissions(path: Path) -> None:
    """Give `path` (and a folder's contents) the permissions the umask gives new files and folders."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def _storage_errors(target: Path, errnos: set[int] = _PLACE_ERRNOS) -> Iterator[None]:
    """An OSError of where a write goes (disk full, read-only, no permission) -> UnwritableError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in errnos:
            raise
        raise UnwritableError(target, exc.strerror or str(exc)) from exc


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    On any error the temporary file is removed, so a half-written file is never read back; a
    full, read-only or forbidden location raises UnwritableError naming `target`.
    """
    target = Path(target)
    _prepare(target)
    with _storage_errors(target):
        tmp = _new_temporary(target, directory=False)
    try:
        with _storage_errors(target, _DISK_ERRNOS):
            yield tmp
        with _storage_errors(target):
            _publish_permissions(tmp)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: str | Path, data: bytes) -> None:
    """Write `data` to `target` through :func:`atomic_path` (temporary file, then rename)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`.

    An older folder of that name is renamed aside, the new one renamed in, then the old one
    deleted, so there is no moment (beyond two renames) without a complete folder there. On any
    error the temporary folder is removed and an older folder stays, so a reader finds the old
    complete folder or the new complete one, never a half-written one.
    """
    target = Path(target)
    _prepare(target)
    with _storage_errors(target):
        tmp = _new_temporary(target, directory=True)
    old = None
    try:
        with _storage_errors(target, _DISK_ERRNOS):
            yield tmp
        with _storage_errors(target):
            _publish_permissions(tmp)
            if target.exists():
                old = _new_temporary(target, directory=True, kind="old")
                os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                if old is not None:
                    os.replace(old, target)
                    old = None
                raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def save_or_rescue(save: Callable[[Path], object], target: str | Path, what: str) -> Path:
    """Run `save(target)`; when the target cannot be written (UnwritableError) after the work is
    done, save to the cache's `rescued/` folder or the temporary folder instead and raise an
    UnwritableError that says where the result went, or, if nowhere, exactly what was lost
    (`what`, e.g. "the index of 1,200 embedded items")."""
    target = Path(target)
    try:
        save(target)
        return target
    except UnwritableError as exc:
        failure = exc
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (cache_dir() / "rescued", Path(tempfile.gettempdir())):
        rescue = folder / f"{target.stem}.{stamp}{target.suffix}"
        try:
            save(rescue)
        except (UnwritableError, OSError):
            continue
        raise UnwritableError(target, f"{failure.reason}; {what} was saved to {rescue} instead "
                                      "(move it where you want it)") from failure
    raise UnwritableError(target, f"{failure.reason}; {what} could not be saved anywhere and is lost") from failure


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_hash_path(path: str | Path) -> Path:
    """Where the sha256 of a download without a known hash is recorded (trust on first use)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def download(url: str, target: Path, sha256: str | None = None) -> Path:
    """Download `url` to `target` atomically (torch.hub's downloader writes a temp file and
    renames it), verifying the sha256 when one is known. Without one, the hash of what arrived is
    recorded beside the file (`recorded_hash_path`) and logged, so a later change of the file is
    noticed (trust on first use). Refuses when offline."""
    if is_offline():
        raise OfflineError(f"offline mode is set (HF_HUB_OFFLINE/HYBRID_RETRIEVAL_OFFLINE); not downloading {url}")
    from torch.hub import download_url_to_file

    target.parent.mkdir(parents=True, exist_ok=True)
    download_url_to_file(url, str(target), hash_prefix=sha256, progress=True)
    if sha256 is None:
        got = file_sha256(target)
        write_atomic(recorded_hash_path(target), f"{got}  {target.name}\n".encode())
        log.warning("no sha256 is recorded for %s; the downloaded file's sha256 is %s, recorded in %s and checked "
                    "on every later use (trust on first use)", url, got, recorded_hash_path(target))
    return target
