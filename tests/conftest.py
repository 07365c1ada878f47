"""Test-wide settings: no hub access, and the location of the shared reference data."""
import contextlib
import os
import subprocess

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """`../shared` beside the repository (always present in CI); tests needing it skip only if absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def weights_dir(shared: Path) -> Path:
    """The folder holding the released mn04_as checkpoint."""
    return shared / "models"


@pytest.fixture()
def offline_weights(monkeypatch: pytest.MonkeyPatch, weights_dir: Path, tmp_path: Path) -> Path:
    """Weights resolvable through HYBRID_RETRIEVAL_WEIGHTS_DIR, and an empty private cache."""
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    return weights_dir


TONES = (("a low hum drones", 110.0), ("a high whistle sounds", 2000.0), ("white noise hisses", None),
         ("a beep at mid pitch", 600.0))


def write_tone_dataset(root: Path, sizes: dict[str, int], seconds: float = 2.0) -> Path:
    """A small Clotho-layout dataset of tones and noise with exactly known captions and keywords.

    Clip i of a split is kind i % 4 of TONES (pitch shifted slightly by i), with length
    seconds + 0.25 * (i % 3) so batches mix lengths.
    """
    import csv

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    sr = 32_000
    for split, n in sizes.items():
        audio_dir = root / f"clotho_audio_{split}"
        audio_dir.mkdir(parents=True, exist_ok=True)
        captions, metadata = [], []
        for i in range(n):
            phrase, freq = TONES[i % len(TONES)]
            t = np.arange(int(sr * (seconds + 0.25 * (i % 3)))) / sr
            wave = np.sin(2 * np.pi * freq * (1 + 0.05 * i) * t) if freq else rng.standard_normal(len(t)) * 0.5
            name = f"{split} clip {i:02d}.wav"
            sf.write(audio_dir / name, (0.3 * wave).astype(np.float32), sr)
            captions.append([name] + [f"{phrase} in clip {i} take {k}" for k in range(5)])
            metadata.append([name, f"{phrase.split()[1]};tone;clip{i}", i, "", "", "tests", "cc0"])
        with open(root / f"clotho_captions_{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
            writer.writerows(captions)
        with open(root / f"clotho_metadata_{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "keywords", "sound_id", "sound_link", "start_end_samples",
                             "manufacturer", "license"])
            writer.writerows(metadata)
    return root


@pytest.fixture(scope="session")
def tone_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("tones"),
                              {"development": 16, "validation": 8, "evaluation": 8})


@pytest.fixture(scope="session")
def trained_run(tone_dataset: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A content-only model with frozen towers, trained in-process on the tone dataset (read-only use)."""
    from hybrid_retrieval.training.config import split_config
    from hybrid_retrieval.training.loop import train

    tmp = tmp_path_factory.mktemp("trained_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        patch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp / "cache"))
        model_config, train_config = split_config({
            "dataset": "clotho", "data_root": str(tone_dataset), "batch_size": 16, "epochs": 8,
            "lr_head": 0.003, "embed_dim": 64, "eval_every": 0, "progress": False,
            "cache_dir": str(tmp / "features")})
        train(model_config, train_config, tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="session")
def text_tower():
    """The bundled MiniLM text tower, loaded once (read-only use)."""
    from hybrid_retrieval.text.tower import TextTower

    return TextTower().eval()


@pytest.fixture(scope="session")
def mn04(shared: Path):
    """The mn04_as audio tower with the released weights, loaded once (read-only use)."""
    from hybrid_retrieval.audio.tower import create_audio_tower

    return create_audio_tower("efficientat:mn04_as", weights=str(shared / "models" / "mn04_as_mAP_432.pt")).eval()


# A tiny WavCaps in its published JSON format: entry fields as each source's file has them
# (FreeSound: id, file_name, href, tags, description, author, download_link, caption, duration;
# BBC: id, description, category, caption, duration, download_link; SoundBible: title,
# description, author, href, caption, id, duration; AudioSet_SL: id, caption, audio, duration).
WAVCAPS_ENTRIES = {
    "FreeSound": [
        {"id": "180913", "file_name": "Garden birds.wav", "href": "180913-Garden-birds.html",
         "tags": ["birds", " garden ", ""], "description": "Birds in my garden at dawn.", "author": "someone",
         "download_link": "https://freesound.org/people/someone/sounds/180913/download/180913.wav",
         "caption": "Birds are chirping in a garden.", "duration": 1.5},
        {"id": "80399", "file_name": "Radio Garble.wav", "href": "80399-Radio-Garble.html", "tags": [],
         "description": "", "author": "other", "download_link": "https://freesound.org/people/other/sounds/80399/",
         "caption": "A radio crackles with voices.", "duration": 1},
        {"id": "555", "file_name": "never downloaded.wav", "href": "555.html", "tags": ["rain"],
         "description": "Rain.", "author": "x", "download_link": "https://freesound.org/s/555/",
         "caption": "Rain falls on a roof.", "duration": 2.0},
    ],
    "BBC_Sound_Effects": [
        {"id": "07070001", "description": "Kettle boiling, switch off.", "category": "['Kitchen']",
         "caption": "A kettle boils and clicks off.", "duration": 1.25,
         "download_link": "https://sound-effects-media.bbcrewind.co.uk/zip/07070001.wav.zip"},
    ],
    "SoundBible": [
        {"title": "Service Bell Help", "description": "Customer ringing service bell in a store.",
         "author": "Daniel Simion", "href": "2218-Service-Bell-Help.html", "caption": "Someone is ringing a bell.",
         "id": "2218", "duration": 1.5},
    ],
    "AudioSet_SL": [
        {"id": "Y---1_cCGK4M.wav", "caption": "A man speaks while a vehicle passes by.",
         "audio": "wav_path", "duration": 1.0},
    ],
}
WAVCAPS_JSON = {"FreeSound": "fsd_final.json", "BBC_Sound_Effects": "bbc_final.json", "SoundBible": "sb_final.json",
                "AudioSet_SL": "as_final.json"}
WAVCAPS_MISSING_AUDIO = ("FreeSound", "555")  # its FLAC is not written


def write_wavcaps(base: Path) -> Path:
    """WAVCAPS_ENTRIES as `base/json_files/<Source>/<x>_final.json` ({"num_captions_per_audio": 1,
    "data": [...]}) and FLAC tones in `base/Audio/<Source>/` named as aac-datasets names them."""
    import json

    import numpy as np
    import soundfile as sf

    sr = 32_000
    for k, (source, entries) in enumerate(WAVCAPS_ENTRIES.items()):
        folder = base / "json_files" / source
        folder.mkdir(parents=True, exist_ok=True)
        (folder / WAVCAPS_JSON[source]).write_text(json.dumps({"num_captions_per_audio": 1, "data": entries}))
        audio = base / "Audio" / source
        audio.mkdir(parents=True, exist_ok=True)
        for i, entry in enumerate(entries):
            if (source, entry["id"]) == WAVCAPS_MISSING_AUDIO:
                continue
            name = entry["id"].replace(".wav", "") + ".flac"
            t = np.arange(int(sr * entry["duration"])) / sr
            sf.write(audio / name, (0.3 * np.sin(2 * np.pi * (300 + 200 * k + 50 * i) * t)).astype(np.float32), sr)
    return base


@pytest.fixture()
def datasets_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hugging Face `datasets`' cache redirected into tmp_path (where WavCaps' Arrow tables go)."""
    import datasets

    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture()
def wavcaps_root(tmp_path: Path, datasets_cache: Path) -> Path:
    """A tiny WavCaps in aac-datasets' layout (`root/WavCaps/...`), its Arrow cache in tmp_path."""
    root = tmp_path / "wavcaps"
    write_wavcaps(root / "WavCaps")
    return root


@pytest.fixture(scope="session")
def tiny_synthmusic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SynthMusic of 16 clips of 6 s per split (4 genres, 4 lead instruments)."""
    from hybrid_retrieval.data.synthmusic import generate_synthmusic

    return generate_synthmusic(tmp_path_factory.mktemp("synthmusic"), seed=0, n_train=16, n_val=16, n_eval=16,
                               seconds=6.0, workers=2, progress=False, genres=("rock", "techno", "waltz", "ballad"),
                               lead_instruments=("piano", "flute", "violin", "trumpet"))


def _takes_new_files(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made read-only for this process: permission bits, and, for root (whom they do not
    stop), the immutable attribute. Fails, rather than skips, where neither works."""
    folder.chmod(0o555)
    immutable = False
    if _takes_new_files(folder):
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
        immutable = True
    try:
        assert not _takes_new_files(folder), f"cannot make {folder} read-only here"
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True, capture_output=True)
        folder.chmod(0o755)


def dead_pid() -> int:
    """The id of a process that has exited (for temporaries "left by a killed run")."""
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory: pytest.TempPathFactory, weights_dir: Path):
    """The catalogue, checkpoint, index and similarity model of `serve_world.py` (read-only use)."""
    from serve_world import make_serve_world

    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        patch.setenv("HYBRID_RETRIEVAL_CACHE", str(root / "cache"))
        return make_serve_world(root, weights_dir)
