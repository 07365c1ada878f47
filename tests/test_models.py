"""Models by name: the resolver, the released-checkpoint registry (a local file:// release), the
Hugging Face Hub up to the network boundary (its cache offline, a fake HfApi), create_model's
`pretrained=` and --device."""
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from hybrid_retrieval import models
from hybrid_retrieval.devices import resolve_device
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError, NotFoundError, OfflineError
from hybrid_retrieval.index.search_index import model_identity
from hybrid_retrieval.model import RetrievalModel, create_model
from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HYBRID_RETRIEVAL_OFFLINE")


@pytest.fixture(scope="module")
def small_model(weights_dir: Path) -> RetrievalModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        torch.manual_seed(3)
        return create_model("mn04_minilm", embed_dim=16).freeze(audio=True, text=True).eval()


@pytest.fixture(scope="module")
def release(small_model: RetrievalModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A zip of a checkpoint's config.json and model.safetensors, and its sha256."""
    folder = tmp_path_factory.mktemp("release")
    checkpoint = save_checkpoint(folder / "checkpoint", small_model, {"audio_pretrained": True}, TrainingState(1, 1))
    archive = folder / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in models.CHECKPOINT_FILES:
            bundle.write(checkpoint / name, name)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """No offline switch (file:// URLs and the fakes below never reach a network)."""
    for name in OFFLINE:
        monkeypatch.delenv(name, raising=False)


def test_a_released_checkpoint_is_downloaded_checked_and_cached(small_model, release, tmp_path: Path,
                                                                 offline_weights: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    archive, sha = release
    monkeypatch.setitem(models.RELEASED, "tiny", models.ReleasedCheckpoint("mn04_minilm", archive.as_uri(), sha))
    assert ("mn04_minilm", "tiny") in models.list_pretrained()
    assert ("audioset_tags", "audioset_tags") in models.list_pretrained()
    with pytest.raises(OfflineError, match="'tiny' is not in the cache"):
        models.load_retrieval_model("tiny")  # offline (conftest) and not cached yet
    _online(monkeypatch)
    model, info = models.load_retrieval_model("tiny")
    assert info == {"path": "tiny", "epoch": 1, "step": 1}
    assert model_identity(model) == model_identity(small_model)
    folder = models.checkpoints_cache_dir() / f"tiny-{sha[:16]}"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the archive is not kept

    # the second use finds the cache: no download (the URL now leads nowhere), also offline
    monkeypatch.setitem(models.RELEASED, "tiny", models.ReleasedCheckpoint("mn04_minilm", "file:///nowhere.zip", sha))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_identity(create_model("mn04_minilm", pretrained="tiny")) == model_identity(small_model)
    with pytest.raises(IncompatibleModelError, match="not a mn10_minilm model: its audio_encoder 'efficientat:mn04"):
        create_model("mn10_minilm", pretrained="tiny")
    with pytest.raises(BadInputError, match="no overrides"):
        create_model("mn04_minilm", pretrained="tiny", embed_dim=8)


def test_a_release_whose_hash_differs_is_refused_and_not_kept(release, tmp_path: Path, offline_weights: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    archive, sha = release
    wrong = hashlib.sha256(b"something else").hexdigest()
    monkeypatch.setitem(models.RELEASED, "bad", models.ReleasedCheckpoint("mn04_minilm", archive.as_uri(), wrong))
    _online(monkeypatch)
    with pytest.raises(IncompatibleModelError, match=f"does not have the recorded sha256 {wrong}"):
        models.load_retrieval_model("bad")
    assert not list(models.checkpoints_cache_dir().iterdir())
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"plain text")
    monkeypatch.setitem(models.RELEASED, "text", models.ReleasedCheckpoint(
        "mn04_minilm", not_zip.as_uri(), hashlib.sha256(b"plain text").hexdigest()))
    with pytest.raises(BadInputError, match="is not a zip archive"):
        models.load_retrieval_model("text")
    monkeypatch.setitem(models.RELEASED, "gone", models.ReleasedCheckpoint("mn04_minilm", "file:///nowhere.zip", sha))
    with pytest.raises(OfflineError, match="cannot download released checkpoint 'gone'"):
        models.load_retrieval_model("gone")


def test_hub_ids_offline_are_one_offline_error(offline_weights: Path) -> None:
    with pytest.raises(OfflineError, match="offline mode is set"):
        models.load_retrieval_model("someone/some-model")
    with pytest.raises(OfflineError, match="no checkpoint folder runs/9 here, and as a Hugging Face Hub id"):
        models.load_retrieval_model("runs/9")  # neither a folder here nor anything in the Hub cache
    with pytest.raises(OfflineError, match="not in the Hugging Face cache"):
        models.load_retrieval_model("hf-hub:someone/some-model")
    with pytest.raises(NotFoundError, match="no checkpoint found at nowhere: expected a checkpoint or run folder"):
        models.load_retrieval_model("nowhere")


def test_a_folder_in_the_hub_layout_and_the_hub_cache_load(small_model, tmp_path: Path, offline_weights: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = models.export_folder(small_model, tmp_path / "my-model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not (tmp_path / "latest.json").exists()
    assert 'RetrievalModel.from_pretrained("my-model")' in (folder / "README.md").read_text()
    model = RetrievalModel.from_pretrained(str(folder))
    assert not model.training and model_identity(model) == model_identity(small_model)

    # The Hugging Face cache's layout (what snapshot_download leaves), read offline
    import huggingface_hub

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someone--tiny"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in models.CHECKPOINT_FILES:
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model, info = models.load_retrieval_model("someone/tiny")
    assert info["path"] == "hf-hub:someone/tiny" and model_identity(model) == model_identity(small_model)
    assert model_identity(models.load_retrieval_model(info["path"])[0]) == model_identity(small_model)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls, keeps a copy of the uploaded folder."""

    calls: list = []
    uploaded = Path("unset")

    def __init__(self, token=None) -> None:
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok, self.token))

    def upload_folder(self, repo_id, folder_path, commit_message):
        import shutil

        FakeHfApi.calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, FakeHfApi.uploaded)

        class Commit:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Commit()


def test_push_to_hub_builds_the_folder_and_calls_the_hub_api(small_model, tmp_path: Path, offline_weights: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "uploaded", tmp_path / "uploaded")
    with pytest.raises(OfflineError, match="not uploading to 'someone/tiny'"):
        small_model.push_to_hub("someone/tiny")
    assert FakeHfApi.calls == []
    _online(monkeypatch)
    url = small_model.push_to_hub("someone/tiny", private=True, token="t0k")
    assert url == "https://huggingface.co/someone/tiny/commit/abc"
    assert FakeHfApi.calls == [("create_repo", "someone/tiny", True, True, "t0k"),
                               ("upload_folder", "someone/tiny", "Upload hybrid_retrieval model")]
    uploaded = FakeHfApi.uploaded
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert 'from_pretrained("someone/tiny")' in (uploaded / "README.md").read_text()
    model, _ = models.load_retrieval_model(str(uploaded))
    assert model_identity(model) == model_identity(small_model)


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="torch finds no CUDA device"):
            resolve_device("cuda")
