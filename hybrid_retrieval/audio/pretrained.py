"""Registry of released EfficientAT AudioSet weights, and how a weights file is found.

Resolution order: an explicit path, then the directory in $HYBRID_RETRIEVAL_WEIGHTS_DIR, then
the user cache (`<cache>/weights`), then a download into that cache (verified against the
recorded sha256 where the project knows it; where it does not, the hash of the download is
recorded beside the file and every later use checks it: trust on first use). Loading uses
`torch.load(weights_only=True)`, so a checkpoint can never run code when unpickled, and the
tower loads the state dict strictly, a second check that the file is the model's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid_retrieval import hub
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError, NotFoundError


@dataclass(frozen=True)
class PretrainedWeights:
    filename: str  # the name it is cached and looked up under
    url: str
    sha256: str | None = None  # None: not recorded by this project yet, the file is not verified


def _efficientat_release(filename: str, sha256: str | None = None) -> PretrainedWeights:
    """A file of the EfficientAT GitHub release v0.0.1."""
    return PretrainedWeights(filename, f"https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/{filename}",
                             sha256)


PRETRAINED: dict[str, PretrainedWeights] = {
    "mn04_as": _efficientat_release("mn04_as_mAP_432.pt",
                                    "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    "mn05_as": _efficientat_release("mn05_as_mAP_443.pt"),
    "mn10_as": _efficientat_release("mn10_as_mAP_471.pt"),
    "mn20_as": _efficientat_release("mn20_as_mAP_478.pt"),
    "mn30_as": _efficientat_release("mn30_as_mAP_482.pt"),
    "mn40_as": _efficientat_release("mn40_as_mAP_484.pt"),
    "mn40_as_ext": _efficientat_release("mn40_as_ext_mAP_487.pt"),
}


class WeightsNotFoundError(NotFoundError):
    """The weights file is nowhere to be found and cannot be downloaded. `reason` is the first
    part of the message alone (which file, why not downloaded), for a one-line note."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def weights_cache_dir() -> Path:
    return hub.cache_dir() / "weights"


def resolve_weights(name: str, path: str | Path | None = None, download: bool = True) -> Path:
    """The local file holding the weights of `name`, downloading them into the cache if needed."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
        return path
    if name not in PRETRAINED:
        raise BadInputError(f"no released weights for {name!r}; known: {sorted(PRETRAINED)}")
    spec = PRETRAINED[name]
    candidates = []
    if os.environ.get("HYBRID_RETRIEVAL_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["HYBRID_RETRIEVAL_WEIGHTS_DIR"]).expanduser() / spec.filename)
    cached = weights_cache_dir() / spec.filename
    candidates.append(cached)
    for candidate in candidates:
        if candidate.is_file():
            return _verified(candidate)
    reason = "downloading is disabled"
    if download:
        try:
            return hub.download(spec.url, cached, spec.sha256)
        except Exception as exc:  # offline, DNS failure, HTTP error, hash mismatch
            reason = f"download failed: {exc}"
    summary = f"weights {spec.filename} for {name} not found ({reason})"
    raise WeightsNotFoundError(
        f"{summary}. Download {spec.url} and put it in {weights_cache_dir()} or in a directory named by "
        f"HYBRID_RETRIEVAL_WEIGHTS_DIR, or pass its path explicitly (--weights PATH).", reason=summary)


def _verified(path: Path) -> Path:
    """`path`, after checking it against the sha256 recorded when it was downloaded without a
    known hash (trust on first use; see hub.download): a file changed since is refused."""
    record = hub.recorded_hash_path(path)
    if not record.is_file():
        return path
    words = record.read_text().split()  # "<sha256>  <file name>", as sha256sum writes it
    recorded = words[0] if words else ""
    actual = hub.file_sha256(path)
    if actual != recorded:
        raise IncompatibleModelError(
            f"weights file {path} has sha256 {actual}, but {recorded or 'nothing'} was recorded in {record} when it "
            f"was downloaded; it has changed since. Delete both files to download it again.")
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a released `.pt` state dict without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise BadInputError(f"weights file {path} does not hold a state dict")
    return state
