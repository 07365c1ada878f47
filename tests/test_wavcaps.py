"""WavCaps' loader on a fixture in the published JSON format (tests/conftest.py: WAVCAPS_ENTRIES),
its Arrow cache, and the Freesound exclusion list."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WAVCAPS_ENTRIES, write_wavcaps

from hybrid_retrieval.data.exclusion import drop_freesound_ids, read_freesound_ids
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.data.registry import load_split, resolve_split
from hybrid_retrieval.data.wavcaps import load_wavcaps

# What the loader must make of WAVCAPS_ENTRIES, written out by hand: (item_id, caption, metadata,
# freesound_id), sources in the order AudioSet_SL, BBC_Sound_Effects, FreeSound, SoundBible.
EXPECTED = [
    ("AudioSet_SL/Y---1_cCGK4M.flac", "A man speaks while a vehicle passes by.", {}, ""),
    ("BBC_Sound_Effects/07070001.flac", "A kettle boils and clicks off.", {"fs": "Kettle boiling, switch off."}, ""),
    ("FreeSound/180913.flac", "Birds are chirping in a garden.",
     {"os": ["birds", "garden"], "fs": "Birds in my garden at dawn."}, "180913"),
    ("FreeSound/80399.flac", "A radio crackles with voices.", {}, "80399"),
    ("FreeSound/555.flac", "Rain falls on a roof.", {"os": ["rain"], "fs": "Rain."}, "555"),
    ("SoundBible/2218.flac", "Someone is ringing a bell.", {"fs": "Customer ringing service bell in a store."}, ""),
]
MISSING = "FreeSound/555.flac"


def summary(items: list[CatalogueItem]) -> list[tuple]:
    return [(item.item_id, *item.captions, item.metadata, item.freesound_id) for item in items]


def test_train_split_reads_all_sources_in_aac_layout(wavcaps_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    everything = load_wavcaps(wavcaps_root, "train", require_audio=False)
    assert summary(everything) == EXPECTED
    for item in everything:  # aac-datasets' place: root/WavCaps/Audio/<Source>/<name>
        assert item.audio_path == wavcaps_root / "WavCaps" / "Audio" / item.item_id
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        items = load_wavcaps(wavcaps_root, "train")
    assert summary(items) == [row for row in EXPECTED if row[0] != MISSING]
    assert all(item.audio_path.is_file() for item in items)
    (message,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert message.startswith("wavcaps/FreeSound: skipped 1 of 3 clips")
    assert str(wavcaps_root / "WavCaps" / "Audio" / "FreeSound") in message


@pytest.mark.parametrize(("split", "source"), [("fsd", "FreeSound"), ("freesound", "FreeSound"),
                                               ("bbc", "BBC_Sound_Effects"), ("sb", "SoundBible"),
                                               ("as", "AudioSet_SL"), ("AudioSet_SL", "AudioSet_SL")])
def test_one_source_per_split_in_plain_layout(tmp_path: Path, datasets_cache: Path, split: str, source: str) -> None:
    root = write_wavcaps(tmp_path / "plain")  # root/json_files, root/Audio/<Source>
    assert resolve_split("wavcaps", split) == source
    items = load_split("wavcaps", root, split, require_audio=False)
    assert summary(items) == [row for row in EXPECTED if row[0].startswith(source + "/")]
    assert all(item.audio_path == root / "Audio" / item.item_id for item in items)


def test_lowercase_audio_folder(tmp_path: Path, datasets_cache: Path) -> None:
    root = write_wavcaps(tmp_path / "plain")
    (root / "Audio").rename(root / "audio")
    items = load_wavcaps(root, "SoundBible")
    assert [item.audio_path for item in items] == [root / "audio" / "SoundBible" / "2218.flac"]


def test_errors_name_what_is_missing(tmp_path: Path, wavcaps_root: Path) -> None:
    with pytest.raises(ValueError, match="'holdout'.*train.*FreeSound"):
        load_wavcaps(wavcaps_root, "holdout")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_wavcaps(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="json_files"):
        load_wavcaps(tmp_path, "train")  # a folder without WavCaps in it
    (wavcaps_root / "WavCaps" / "json_files" / "SoundBible" / "sb_final.json").unlink()
    with pytest.raises(FileNotFoundError, match="sb_final.json"):
        load_wavcaps(wavcaps_root, "train")
    assert len(load_wavcaps(wavcaps_root, "FreeSound", require_audio=False)) == 3  # the other sources still load
    bad = wavcaps_root / "WavCaps" / "json_files" / "BBC_Sound_Effects" / "bbc_final.json"
    bad.write_text(json.dumps({"data": [{"id": "1", "description": "no caption field", "duration": 1.0}]}))
    with pytest.raises(ValueError, match=r"bbc_final.json: entries lack \['caption'\]"):
        load_wavcaps(wavcaps_root, "BBC_Sound_Effects")


def test_json_is_parsed_once_into_the_arrow_cache(wavcaps_root: Path, datasets_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.packaged_modules.json.json import Json

    first = load_wavcaps(wavcaps_root, "FreeSound", require_audio=False)
    tables = list(datasets_cache.rglob("*.arrow"))
    assert len(tables) == 1  # inside the (redirected) user cache
    stamp = tables[0].stat().st_mtime_ns

    def no_parsing(*args, **kwargs):
        raise AssertionError("the JSON file was parsed again")

    with monkeypatch.context() as patch:
        patch.setattr(Json, "_generate_tables", no_parsing)
        assert summary(load_wavcaps(wavcaps_root, "FreeSound", require_audio=False)) == summary(first)
    assert tables[0].stat().st_mtime_ns == stamp

    # An edited file is a new table, not the stale cached one.
    path = wavcaps_root / "WavCaps" / "json_files" / "FreeSound" / "fsd_final.json"
    entries = [dict(WAVCAPS_ENTRIES["FreeSound"][0], caption="An edited caption.")]
    path.write_text(json.dumps({"data": entries}))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    (item,) = load_wavcaps(wavcaps_root, "FreeSound", require_audio=False)
    assert item.captions == ["An edited caption."]


def test_cache_follows_hf_datasets_cache_offline(tmp_path: Path) -> None:
    """A fresh process with HF_DATASETS_CACHE set and the network switched off reads the fixture
    and leaves its Arrow table there."""
    root = write_wavcaps(tmp_path / "plain")
    cache = tmp_path / "elsewhere"
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from hybrid_retrieval.data.wavcaps import load_wavcaps; "
            "print(len(load_wavcaps(sys.argv[1], 'train')))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == str(len(EXPECTED) - 1)
    assert len(list(cache.rglob("*.arrow"))) == len(WAVCAPS_ENTRIES)  # one table per source's JSON


# --- the Freesound exclusion list --------------------------------------------------------------


def test_exclusion_list_drops_by_freesound_id(tmp_path: Path, wavcaps_root: Path) -> None:
    listing = tmp_path / "dcase2025_task6_excluded_freesound_ids.csv"
    listing.write_text("sound_id\n80399\n 555 \n\n999999\n")
    excluded = read_freesound_ids(listing)
    assert excluded == {"80399", "555", "999999"}
    items = load_wavcaps(wavcaps_root, "train", require_audio=False)
    kept = drop_freesound_ids(items, excluded)
    assert [item.item_id for item in kept] == [row[0] for row in EXPECTED
                                               if row[3] not in ("80399", "555")]  # items without an id stay


def test_exclusion_list_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_freesound_ids(tmp_path / "absent.csv")
    wrong = tmp_path / "ids.csv"
    wrong.write_text("freesound_id\n80399\n")
    with pytest.raises(ValueError, match=r"ids.csv: no 'sound_id' column \(header: \['freesound_id'\]\)"):
        read_freesound_ids(wrong)


def test_copied_tree_is_a_new_cache_entry(tmp_path: Path, wavcaps_root: Path) -> None:
    """Two copies of WavCaps in different places are different tables (keyed by path)."""
    copy = tmp_path / "copy"
    shutil.copytree(wavcaps_root, copy)
    entries = copy / "WavCaps" / "json_files" / "SoundBible" / "sb_final.json"
    entries.write_text(json.dumps({"data": [dict(WAVCAPS_ENTRIES["SoundBible"][0], caption="Another bell.")]}))
    assert load_wavcaps(wavcaps_root, "SoundBible", require_audio=False)[0].captions == ["Someone is ringing a bell."]
    assert load_wavcaps(copy, "SoundBible", require_audio=False)[0].captions == ["Another bell."]


def test_ids_that_leave_the_audio_folder_are_refused(tmp_path: Path, datasets_cache: Path) -> None:
    import json

    from hybrid_retrieval.data.wavcaps import load_wavcaps
    from hybrid_retrieval.errors import BadInputError

    base = write_wavcaps(tmp_path / "wc")
    path = base / "json_files" / "SoundBible" / "sb_final.json"
    table = json.loads(path.read_text())
    table["data"][0]["id"] = "../../../etc/passwd"
    path.write_text(json.dumps(table))
    with pytest.raises(BadInputError, match="leaves the dataset folder"):
        load_wavcaps(tmp_path / "wc", "SoundBible", require_audio=False)
