"""Retrieval models by name, for every command that takes `--checkpoint`: one resolver.

    model, info = load_retrieval_model("runs/3")              # a run folder (its latest), a checkpoint folder
    model, info = load_retrieval_model("audioset_tags")       # training-free: the AudioSet tagger's labels (any audio)
    model, info = load_retrieval_model("<released name>")     # a released checkpoint (RELEASED), cached once
    model, info = load_retrieval_model("user/repo")           # a Hugging Face Hub model repository ("hf-hub:user/repo")

Resolution order: the training-free model configs (TRAINING_FREE), the released checkpoints, an
`hf-hub:` id, an existing local folder, then any other `owner/name` as a Hub id. A local folder in
the Hub layout (config.json + model.safetensors) is a checkpoint folder like any other.

* **Released checkpoints** (RELEASED: name -> model config, URL, sha256; none published yet) are
  zip archives holding config.json and model.safetensors. The first use downloads the archive
  into the user cache (`<cache>/checkpoints/`, see `hub.cache_dir`), checks its sha256 and unpacks
  it into a folder named after the name and hash, written atomically; later uses find that folder
  and do not touch the network.
* **Hugging Face Hub**: `huggingface_hub.snapshot_download` fetches config.json and
  model.safetensors into the Hugging Face cache (offline, only the cache is looked at);
  `push_to_hub` uploads a model in the same layout. Offline or unreachable is one OfflineError.

`info` is {"path", "epoch", "step"}: how the model is found again (an index records it, and
`search` passes it back here): the resolved folder for local checkpoints, the name or `hf-hub:` id
otherwise. Models come back in eval mode, their towers frozen where they are pretrained.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid_retrieval import hub
from hybrid_retrieval.devices import resolve_device
from hybrid_retrieval.errors import (
    BadInputError,
    IncompatibleModelError,
    NotFoundError,
    OfflineError,
)
from hybrid_retrieval.model import RetrievalModel, create_model, get_model_config
from hybrid_retrieval.training.checkpoint import (
    TrainingState,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

# Bundled model configs that need no trained weights: loadable by name wherever a checkpoint is.
TRAINING_FREE = ("audioset_tags",)
HUB_PREFIX = "hf-hub:"
CHECKPOINT_FILES = ("config.json", "model.safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A checkpoint the project publishes: a zip archive of config.json and model.safetensors."""

    architecture: str  # the model config it was trained from (create_model's name)
    url: str
    sha256: str
    description: str = ""


# name -> released checkpoint. None is published yet; an entry is one line here.
RELEASED: dict[str, ReleasedCheckpoint] = {}


def list_pretrained() -> list[tuple[str, str]]:
    """(architecture, name) of every released checkpoint and training-free model, open_clip style."""
    return sorted([(spec.architecture, name) for name, spec in RELEASED.items()]
                  + [(name, name) for name in TRAINING_FREE])


def checkpoints_cache_dir() -> Path:
    return hub.cache_dir() / "checkpoints"


def released_checkpoint(name: str) -> Path:
    """The local folder of released checkpoint `name`: found in the user cache, or downloaded
    (sha256-checked) and unpacked there once."""
    if name not in RELEASED:
        raise NotFoundError(f"no released checkpoint {name!r}; released: {sorted(RELEASED) or 'none yet'}")
    spec = RELEASED[name]
    folder = checkpoints_cache_dir() / f"{name}-{spec.sha256[:16]}"
    if all((folder / file).is_file() for file in CHECKPOINT_FILES):
        return folder
    archive = folder.with_name(folder.name + ".zip")
    try:
        hub.download(spec.url, archive, spec.sha256)
    except OfflineError as exc:
        raise OfflineError(f"released checkpoint {name!r} is not in the cache ({folder}) and {exc}") from exc
    except RuntimeError as exc:  # torch's download checks the sha256 and raises this on a mismatch
        raise IncompatibleModelError(f"released checkpoint {name!r}: the download of {spec.url} does not have the "
                                     f"recorded sha256 {spec.sha256} ({exc}); nothing was kept") from exc
    except OSError as exc:  # URLError, HTTPError, a file:// URL that is not there, ...
        raise OfflineError(f"cannot download released checkpoint {name!r} from {spec.url}: {exc}") from exc
    try:
        _unpack(archive, folder)
    finally:
        archive.unlink(missing_ok=True)
    return folder


def _unpack(archive: Path, folder: Path) -> None:
    """config.json and model.safetensors of a released archive into `folder`, atomically (only
    those two members are read, so no other path of the archive is ever written)."""
    try:
        with zipfile.ZipFile(archive) as bundle, hub.atomic_directory(folder) as tmp:
            missing = [file for file in CHECKPOINT_FILES if file not in bundle.namelist()]
            if missing:
                raise BadInputError(f"released archive {archive} does not hold {missing}")
            for file in CHECKPOINT_FILES:
                with bundle.open(file) as source, open(tmp / file, "wb") as target:
                    shutil.copyfileobj(source, target)
    except zipfile.BadZipFile as exc:
        raise BadInputError(f"released archive {archive} is not a zip archive ({exc})") from exc


def hub_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a Hugging Face Hub model repository in the checkpoint layout
    (only config.json and model.safetensors are fetched). Offline (an offline variable set), only
    the Hugging Face cache is looked at."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub.offline_switches()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(CHECKPOINT_FILES),
                                        local_files_only=bool(offline)))
    except HFValidationError as exc:
        raise BadInputError(f"{repo_id!r} is not a Hugging Face Hub model id ({exc})") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise NotFoundError(f"no Hugging Face Hub model {repo_id!r}"
                            f"{f' at revision {revision!r}' if revision else ''} (or it is private)") from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise OfflineError(f"Hugging Face Hub model {repo_id!r} is not in the Hugging Face cache and offline mode "
                               f"is set ({', '.join(offline)}); unset it to download the model once") from exc
        raise OfflineError(f"cannot reach the Hugging Face Hub to download {repo_id!r}: {exc}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise OfflineError(f"cannot download Hugging Face Hub model {repo_id!r}: {exc}") from exc
    missing = [file for file in CHECKPOINT_FILES if not (folder / file).is_file()]
    if missing:
        raise NotFoundError(f"Hugging Face Hub model {repo_id!r} has no {' or '.join(missing)}: it is not a "
                            f"hybrid_retrieval model (push one with RetrievalModel.push_to_hub)")
    return folder


def checkpoint_folder(spec: str) -> tuple[Path, str]:
    """(checkpoint folder, how to find it again) of a released name, Hub id or local path."""
    if spec in RELEASED:
        return released_checkpoint(spec), spec
    if spec.startswith(HUB_PREFIX):
        return hub_checkpoint(spec[len(HUB_PREFIX):]), spec
    if Path(spec).expanduser().exists():
        directory = find_checkpoint(Path(spec).expanduser()).resolve()
        return directory, str(directory)
    if _HUB_ID.match(spec):
        try:
            return hub_checkpoint(spec), HUB_PREFIX + spec
        except (OfflineError, NotFoundError) as exc:
            raise type(exc)(f"no checkpoint folder {spec} here, and as a Hugging Face Hub id: {exc}") from exc
    raise NotFoundError(f"no checkpoint found at {spec}: expected a checkpoint or run folder, a released checkpoint "
                        f"({', '.join(sorted(RELEASED)) or 'none released yet'}), one of {', '.join(TRAINING_FREE)}, "
                        f"or a Hugging Face Hub id (user/repo)")


def load_retrieval_model(spec: str | Path, device: str | torch.device = "cpu",
                         audio_weights: str | None = None) -> tuple[RetrievalModel, dict]:
    """(model in eval mode, {"path", "epoch", "step"}) of a checkpoint or run folder, a released
    checkpoint's name, a training-free model (`audioset_tags`) or a Hugging Face Hub id; see the
    module docstring. `device`: "auto", "cpu", "cuda", ...; `audio_weights`: the audio tower's
    weights file, where it is not found by the usual resolution (`audio.pretrained`)."""
    spec = str(spec)
    device = resolve_device(device) if isinstance(device, str) else device
    if spec in TRAINING_FREE:
        model = create_model(spec, audio_weights=audio_weights).freeze(audio=True, text=True)
        return model.eval().to(device), {"path": spec, "epoch": None, "step": None}
    directory, path = checkpoint_folder(spec)
    model, config = load_checkpoint(directory, device=device, audio_weights=audio_weights)
    return model.eval(), {"path": path, "epoch": config.get("epoch"), "step": config.get("step")}


def load_pretrained(architecture: str, spec: str, audio_weights: str | None = None) -> RetrievalModel:
    """`create_model(architecture, pretrained=spec)`: the model of `spec` (see
    load_retrieval_model), which must have the towers of the model config `architecture`."""
    expected = get_model_config(architecture)
    model, info = load_retrieval_model(spec, audio_weights=audio_weights)
    differs = [f"{key} {getattr(model.config, key)!r} (not {getattr(expected, key)!r})"
               for key in ("audio_encoder", "text_encoder") if getattr(model.config, key) != getattr(expected, key)]
    if differs:
        raise IncompatibleModelError(f"{info['path']} is not a {architecture} model: its {', '.join(differs)}; "
                                     f"pass the config name it was trained from")
    return model


MODEL_CARD = """---
library_name: hybrid_retrieval
tags:
- audio-retrieval
- text-to-audio-retrieval
---
# {name}

A language-based audio retrieval model of hybrid_retrieval: audio tower `{audio}`, text tower
`{text}`, item encoder (fusion) `{fusion}`. Load it with

```python
from hybrid_retrieval.model import RetrievalModel
model = RetrievalModel.from_pretrained("{name}")
```

or give `--checkpoint {name}` to any `hybrid-retrieval` command.
"""


def export_folder(model: RetrievalModel, folder: str | Path, name: str | None = None) -> Path:
    """Write `model` into `folder` (replaced atomically) in the checkpoint layout: config.json and
    model.safetensors (a frozen pretrained tower as its fingerprint only), and a model card,
    README.md, saying how to load it as `name` (default: the folder's name)."""
    folder = save_checkpoint(folder, model, {"audio_pretrained": model.audio_tower.pretrained}, TrainingState(0, 0),
                             pointer=False)
    config = model.config
    card = MODEL_CARD.format(name=name or folder.name, audio=config.audio_encoder, text=config.text_encoder,
                             fusion=config.fusion)
    with hub.atomic_path(folder / "README.md") as tmp:
        tmp.write_text(card, encoding="utf-8")
    return folder


def push_to_hub(model: RetrievalModel, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload hybrid_retrieval model") -> str:
    """Upload `model` to the Hugging Face Hub model repository `repo_id` (created if needed) in the
    checkpoint layout (`export_folder`, built in a temporary folder), through huggingface_hub's
    HfApi; returns the commit's URL. Offline (an offline variable set): one OfflineError before
    anything is built; a refusal by the Hub (no permission, bad token): one BadInputError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if offline := hub.offline_switches():
        raise OfflineError(f"offline mode is set ({', '.join(offline)}); not uploading to {repo_id!r}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_folder(model, Path(tmp) / "model", name=repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        except HfHubHTTPError as exc:
            raise BadInputError(f"the Hugging Face Hub refused the upload to {repo_id!r}: {exc}") from exc
        except OSError as exc:  # no connection
            raise OfflineError(f"cannot reach the Hugging Face Hub to upload {repo_id!r}: {exc}") from exc
    return commit.commit_url
