"""Dataset loaders (Clotho, AudioCaps, SynthMusic layout), the registry and the download wrapper
(WavCaps' loader: tests/test_wavcaps.py).

The real CSV rows in ../shared/fixtures are read as they are; roots with audio are built in
tmp_path from copies of them plus a few tiny silent wavs.
"""
from __future__ import annotations

import csv
import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hybrid_retrieval.data import download
from hybrid_retrieval.data.audiocaps import AUDIO_NAMINGS, load_audiocaps
from hybrid_retrieval.data.clotho import load_clotho, split_tags
from hybrid_retrieval.data.registry import DATASETS, load_split, resolve_split
from hybrid_retrieval.hub import OFFLINE_VARIABLES

BIRDS = " Ambience Birds.wav"  # the leading space is part of Clotho's file name


def write_silence(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(160, dtype=np.float32), 16_000)


def skip_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hybrid_retrieval" and "skipped" in r.getMessage()]


@pytest.fixture()
def clotho_fixtures(shared: Path) -> Path:
    return shared / "fixtures" / "clotho"


@pytest.fixture()
def audiocaps_fixtures(shared: Path) -> Path:
    return shared / "fixtures" / "audiocaps"


# --- Clotho -----------------------------------------------------------------------------------


def test_clotho_fixture_read_as_published(clotho_fixtures: Path) -> None:
    items = load_clotho(clotho_fixtures, "development", require_audio=False)
    assert len(items) == 1
    item = items[0]
    assert item.item_id == BIRDS
    assert item.audio_path.name == BIRDS
    assert item.captions[0] == "A wild assortment of birds are chirping and calling out in nature."
    assert item.captions[2] == "Birds tweeting and chirping happily, engine in the distance."  # quoted comma
    assert item.captions[3] == "An assortment of  wild birds are chirping and calling out in nature."  # kept as is
    assert len(item.captions) == 5
    # metadata row with a quoted "[11162624, 11932169]" start_end_samples
    assert item.metadata == {"os": ["Ambience", "outside", "OWI", "Birds", "night"]}
    assert item.freesound_id == "327673"  # sound_id, the number in its sound_link


def test_clotho_missing_captions_csv_names_path(clotho_fixtures: Path) -> None:
    # The fixture has a metadata CSV for evaluation but no captions CSV.
    with pytest.raises(FileNotFoundError, match="clotho_captions_evaluation.csv"):
        load_clotho(clotho_fixtures, "evaluation", require_audio=False)


def test_clotho_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_clotho(tmp_path / "nowhere", "development")


def test_clotho_empty_start_end_samples(tmp_path: Path, clotho_fixtures: Path) -> None:
    shutil.copyfile(clotho_fixtures / "clotho_metadata_evaluation.csv", tmp_path / "clotho_metadata_evaluation.csv")
    (tmp_path / "clotho_captions_evaluation.csv").write_text(
        "file_name,caption_1,caption_2\nSanta Motor.wav,A motor whirs.,An engine hums.\n", encoding="utf-8"
    )
    (item,) = load_clotho(tmp_path, "evaluation", require_audio=False)
    assert item.item_id == "Santa Motor.wav"
    assert item.captions == ["A motor whirs.", "An engine hums."]
    assert item.metadata == {"os": ["electric-motor", "fear", "motor", "whir"]}


def test_clotho_latin1_metadata_and_utf8_captions(tmp_path: Path) -> None:
    (tmp_path / "clotho_captions_validation.csv").write_bytes(
        "file_name,caption_1\ncafé.wav,Café chatter – cups clink.\nplain.wav,Rain.\n".encode("utf-8")
    )
    (tmp_path / "clotho_metadata_validation.csv").write_bytes(
        "file_name,keywords,sound_id\ncafé.wav,Café; ambiance ;;Paris,1\n".encode("iso-8859-1")
    )
    cafe, plain = load_clotho(tmp_path, "validation", require_audio=False)
    assert cafe.item_id == "café.wav"
    assert cafe.captions == ["Café chatter – cups clink."]
    assert cafe.metadata == {"os": ["Café", "ambiance", "Paris"]}
    assert plain.metadata == {}  # no metadata row


def test_clotho_without_metadata_csv(tmp_path: Path, clotho_fixtures: Path) -> None:
    shutil.copyfile(clotho_fixtures / "clotho_captions_development.csv", tmp_path / "clotho_captions_development.csv")
    (item,) = load_clotho(tmp_path, "development", require_audio=False)
    assert item.metadata == {}
    assert len(item.captions) == 5


def test_clotho_row_with_extra_field_raises(tmp_path: Path) -> None:
    (tmp_path / "clotho_captions_development.csv").write_text("file_name,caption_1\na.wav,one,two\n")
    with pytest.raises(ValueError, match="line 2"):
        load_clotho(tmp_path, "development", require_audio=False)


def test_split_tags() -> None:
    assert split_tags(" a; b;;c ;") == ["a", "b", "c"]
    assert split_tags("") == []


@pytest.mark.parametrize(
    ("csv_dir", "audio_dir"),
    [
        (".", "clotho_audio_development"),
        (".", "development"),
        ("clotho_csv_files", "clotho_audio_files/development"),
        ("CLOTHO_v2.1/clotho_csv_files", "CLOTHO_v2.1/clotho_audio_files/development"),  # aac-datasets
    ],
)
def test_clotho_layouts_and_missing_audio(
    tmp_path: Path, clotho_fixtures: Path, caplog: pytest.LogCaptureFixture, csv_dir: str, audio_dir: str
) -> None:
    csvs = tmp_path / csv_dir
    csvs.mkdir(parents=True, exist_ok=True)
    captions = (clotho_fixtures / "clotho_captions_development.csv").read_text(encoding="utf-8")
    captions += "second.wav,Water drips.\nthird.wav,A dog barks.\n"
    (csvs / "clotho_captions_development.csv").write_text(captions, encoding="utf-8")
    shutil.copyfile(clotho_fixtures / "clotho_metadata_development.csv", csvs / "clotho_metadata_development.csv")
    write_silence(tmp_path / audio_dir / BIRDS)
    write_silence(tmp_path / audio_dir / "third.wav")

    assert len(load_clotho(tmp_path, "development", require_audio=False)) == 3
    with caplog.at_level(logging.INFO, logger="hybrid_retrieval"):
        items = load_clotho(tmp_path, "development")
    assert [item.item_id for item in items] == [BIRDS, "third.wav"]
    assert items[0].audio_path == tmp_path / audio_dir / BIRDS and items[0].audio_path.is_file()
    assert items[0].metadata["os"][0] == "Ambience"
    (record,) = skip_records(caplog)
    assert "clotho/development: skipped 1 of 3 clips" in record.getMessage()
    assert str(tmp_path / audio_dir) in record.getMessage()


def test_synthmusic_extra_columns(tmp_path: Path) -> None:
    (tmp_path / "clotho_captions_evaluation.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        "piece_001.wav,Calm piano.,Soft piano chords.,A slow piano piece.,Gentle keys.,Quiet piano.\n",
        encoding="utf-8",
    )
    (tmp_path / "clotho_metadata_evaluation.csv").write_text(
        "file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license,closed_tags,description\n"
        'piece_001.wav,calm;slow,1,,"[0, 320000]",synth,CC0,Piano; Music ,"A calm, slow piano piece in C major."\n',
        encoding="utf-8",
    )
    (item,) = load_split("synthmusic", tmp_path, "test", require_audio=False)
    assert item.metadata == {
        "os": ["calm", "slow"],
        "cs": ["Piano", "Music"],
        "fs": "A calm, slow piano piece in C major.",
    }
    assert item.metadata_text("cs+os+fs") == "Piano, Music. calm, slow. A calm, slow piano piece in C major."
    # SynthMusic's sound_id numbers its clips and names no Freesound sound; Clotho's names one
    assert item.freesound_id == ""
    assert load_split("clotho", tmp_path, "test", require_audio=False)[0].freesound_id == "1"


# --- AudioCaps --------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_audiocaps_test_split_clips(audiocaps_fixtures: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hybrid_retrieval"):
        items = load_audiocaps(audiocaps_fixtures, "test", require_audio=False)
    assert len(items) == 975
    assert all(len(item.captions) == 5 for item in items)
    assert sum(len(item.captions) for item in items) == 4875
    rows = read_rows(audiocaps_fixtures / "test.csv")
    first = rows[0]
    assert items[0].item_id == f"{first['youtube_id']}_{first['start_time']}"
    clip = (first["youtube_id"], first["start_time"])
    expected = [r["caption"] for r in rows if (r["youtube_id"], r["start_time"]) == clip]
    assert items[0].captions == expected
    # no AudioSet CSVs in the fixture folder under standard names: no tags, one warning
    assert all("cs" not in item.metadata for item in items)
    assert len([r for r in caplog.records if "closed-set tags" in r.getMessage()]) == 1


def expected_tags(fixtures: Path) -> dict[str, list[str]]:
    """item_id -> display names, from the fixture's segment rows and class_labels_indices.csv."""
    names = {row["mid"]: row["display_name"] for row in read_rows(fixtures / "class_labels_indices.csv")}
    tags = {}
    for line in (fixtures / "segments_excerpt.csv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        ytid, start, _end, labels = (field.strip() for field in line.split(",", 3))
        tags[f"{ytid}_{int(float(start))}"] = [names[mid] for mid in labels.strip('"').split(",")]
    return tags


def check_tags(items: list, fixtures: Path) -> None:
    expected = expected_tags(fixtures)
    assert len(expected) == 19
    got = {item.item_id: item.metadata["cs"] for item in items if "cs" in item.metadata}
    assert got == expected
    # one concrete clip: -NsC63dA01g, 10.000, "/m/01yrx,/m/068hy,/m/07qrkrw,/m/09x0r,/m/0jbk"
    assert got["-NsC63dA01g_10"] == expected["-NsC63dA01g_10"]
    assert "Speech" in got["-NsC63dA01g_10"] and len(got["-NsC63dA01g_10"]) == 5


def test_audiocaps_tags_explicit_files(audiocaps_fixtures: Path) -> None:
    items = load_audiocaps(
        audiocaps_fixtures,
        "test",
        require_audio=False,
        segments_csvs=[audiocaps_fixtures / "segments_excerpt.csv"],
        class_labels_csv=audiocaps_fixtures / "class_labels_indices.csv",
    )
    check_tags(items, audiocaps_fixtures)


def test_audiocaps_tags_found_in_metadata_folder(tmp_path: Path, audiocaps_fixtures: Path) -> None:
    shutil.copyfile(audiocaps_fixtures / "test.csv", tmp_path / "test.csv")
    (tmp_path / "metadata").mkdir()
    shutil.copyfile(audiocaps_fixtures / "segments_excerpt.csv", tmp_path / "metadata" / "eval_segments.csv")
    shutil.copyfile(audiocaps_fixtures / "class_labels_indices.csv", tmp_path / "metadata" / "class_labels_indices.csv")
    check_tags(load_audiocaps(tmp_path, "test", require_audio=False), audiocaps_fixtures)


def test_audiocaps_explicit_tag_file_missing(audiocaps_fixtures: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_audiocaps(audiocaps_fixtures, "test", segments_csvs=[tmp_path / "absent.csv"])


@pytest.mark.parametrize(
    ("csv_path", "audio_dir", "naming"),
    [
        ("test.csv", "audio/test", "{ytid}.wav"),
        ("test.csv", "audio/test", "Y{ytid}.wav"),
        ("dataset/test.csv", "audio/test", "{ytid}_{start}.wav"),
        ("AUDIOCAPS/csv_files_v1/test.csv", "AUDIOCAPS/audio_32000Hz/test", "{ytid}_{start}.flac"),  # aac-datasets
        ("AUDIOCAPS/test.csv", "AUDIOCAPS/audio_44100Hz/test", "{ytid}_{start}.flac"),
    ],
)
def test_audiocaps_layouts_and_missing_audio(
    tmp_path: Path,
    audiocaps_fixtures: Path,
    caplog: pytest.LogCaptureFixture,
    csv_path: str,
    audio_dir: str,
    naming: str,
) -> None:
    assert naming in AUDIO_NAMINGS
    (tmp_path / csv_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audiocaps_fixtures / "test.csv", tmp_path / csv_path)
    clips = list(dict.fromkeys((r["youtube_id"], r["start_time"]) for r in read_rows(audiocaps_fixtures / "test.csv")))
    present = clips[:2] + clips[-1:]
    for ytid, start in present:
        write_silence(tmp_path / audio_dir / naming.format(ytid=ytid, start=start))

    with caplog.at_level(logging.INFO, logger="hybrid_retrieval"):
        items = load_audiocaps(tmp_path, "test")
    assert [item.item_id for item in items] == [f"{ytid}_{start}" for ytid, start in present]
    assert all(item.audio_path.is_file() and len(item.captions) == 5 for item in items)
    (record,) = skip_records(caplog)
    assert "audiocaps/test: skipped 972 of 975 clips" in record.getMessage()
    assert str(tmp_path / audio_dir) in record.getMessage()


def test_audiocaps_missing_csv_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"val\.csv"):
        load_audiocaps(tmp_path, "val")


# --- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "alias", "own"),
    [
        ("clotho", "train", "development"),
        ("clotho", "val", "validation"),
        ("clotho", "test", "evaluation"),
        ("clotho", "eval", "evaluation"),
        ("clotho", "evaluation", "evaluation"),
        ("synthmusic", "test", "evaluation"),
        ("audiocaps", "train", "train"),
        ("audiocaps", "validation", "val"),
        ("audiocaps", "eval", "test"),
    ],
)
def test_registry_aliases(dataset: str, alias: str, own: str) -> None:
    assert resolve_split(dataset, alias) == own


def test_registry_loads_through_aliases(clotho_fixtures: Path, audiocaps_fixtures: Path) -> None:
    assert load_split("clotho", clotho_fixtures, "train", require_audio=False)[0].item_id == BIRDS
    assert len(load_split("audiocaps", audiocaps_fixtures, "eval", require_audio=False)) == 975


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clotho.*audiocaps.*synthmusic.*wavcaps"):
        load_split("macs", tmp_path, "train")
    with pytest.raises(ValueError, match="development.*validation.*evaluation"):
        load_split("clotho", tmp_path, "holdout")
    with pytest.raises(ValueError, match="train.*val.*test"):
        resolve_split("audiocaps", "development")
    assert list(DATASETS) == ["clotho", "audiocaps", "synthmusic", "wavcaps"]


# --- download (up to the network boundary) --------------------------------------------------


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def fake_aac(monkeypatch: pytest.MonkeyPatch, online: None) -> list[tuple[str, dict]]:
    """A stand-in aac_datasets package recording the calls to its download functions."""
    calls: list[tuple[str, dict]] = []
    clotho = types.ModuleType("aac_datasets.datasets.functional.clotho")
    clotho.download_clotho_datasets = lambda **kwargs: calls.append(("clotho", kwargs))
    audiocaps = types.ModuleType("aac_datasets.datasets.functional.audiocaps")
    audiocaps.download_audiocaps_datasets = lambda **kwargs: calls.append(("audiocaps", kwargs))
    wavcaps = types.ModuleType("aac_datasets.datasets.functional.wavcaps")
    wavcaps.download_wavcaps_datasets = lambda **kwargs: calls.append(("wavcaps", kwargs))
    for name in ("aac_datasets", "aac_datasets.datasets", "aac_datasets.datasets.functional"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, clotho.__name__, clotho)
    monkeypatch.setitem(sys.modules, audiocaps.__name__, audiocaps)
    monkeypatch.setitem(sys.modules, wavcaps.__name__, wavcaps)
    return calls


def test_download_clotho_calls_aac(fake_aac: list, tmp_path: Path) -> None:
    root = tmp_path / "data"
    download.download_dataset("clotho", root, ["train", "test"])
    assert fake_aac == [("clotho", {"root": str(root), "subsets": ["dev", "eval"], "verbose": 1, "version": "v2.1"})]
    assert root.is_dir()


def test_download_audiocaps_calls_aac(fake_aac: list, tmp_path: Path) -> None:
    download.download_dataset("audiocaps", tmp_path, "validation")
    ((name, kwargs),) = fake_aac
    assert name == "audiocaps"
    assert kwargs["root"] == str(tmp_path) and kwargs["subsets"] == ["val"] and kwargs["with_tags"] is True


@pytest.mark.parametrize(("splits", "subsets"), [
    (None, ["audioset", "bbc", "freesound", "soundbible"]),  # train and every source: each subset once
    ("train", ["audioset", "bbc", "freesound", "soundbible"]),
    (["fsd", "sb"], ["freesound", "soundbible"]),
    ("BBC_Sound_Effects", ["bbc"]),
])
def test_download_wavcaps_calls_aac(fake_aac: list, tmp_path: Path, splits, subsets: list[str]) -> None:
    download.download_dataset("wavcaps", tmp_path, splits)
    assert fake_aac == [("wavcaps", {"root": str(tmp_path), "subsets": subsets, "verbose": 1})]


def test_download_all_splits_by_default(fake_aac: list, tmp_path: Path) -> None:
    download.download_dataset("clotho", tmp_path)
    assert fake_aac[0][1]["subsets"] == ["dev", "val", "eval"]


@pytest.mark.parametrize("variable", OFFLINE_VARIABLES)
def test_download_refuses_offline(
    fake_aac: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(download.OfflineError, match=variable) as excinfo:
        download.download_dataset("clotho", tmp_path / "data", "train")
    assert "clotho_captions_" in str(excinfo.value)  # says what to place by hand
    assert fake_aac == []
    assert not (tmp_path / "data").exists()


def test_download_wavcaps_offline_says_what_to_place(fake_aac: list, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(download.OfflineError, match=r"cvssp/WavCaps.*Audio/<Source>/<id>\.flac"):
        download.download_dataset("wavcaps", tmp_path / "wavcaps")
    assert fake_aac == []


def test_download_offline_switch_off_values(fake_aac: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    download.download_dataset("audiocaps", tmp_path, "test")
    assert len(fake_aac) == 1


def test_download_without_library(online: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "aac_datasets", None)  # makes `import aac_datasets...` fail
    with pytest.raises(ImportError, match=r'pip install "hybrid_retrieval\[download\]"'):
        download.download_dataset("clotho", tmp_path, "train")


def test_download_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generated locally"):  # SynthMusic's spec has no downloader
        download.download_dataset("synthmusic", tmp_path)
    with pytest.raises(ValueError, match="holdout"):
        download.download_dataset("clotho", tmp_path, "holdout")
