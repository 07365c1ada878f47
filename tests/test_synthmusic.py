"""SynthMusic generator: determinism, factor coverage, audio format, Clotho layout, cache, errors,
resuming an interrupted run, and tempo of the rendered audio. Tiny sets (about 40 clips of 6 s)."""
from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hybrid_retrieval.data import synthmusic as sm
from hybrid_retrieval.data import synthmusic_render as smr
from hybrid_retrieval.data import synthmusic_text as smt

SIZES = dict(n_train=16, n_val=12, n_eval=12)
SECONDS = 6.0
PARAMS = dict(seed=0, seconds=SECONDS, progress=False, **SIZES)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="ascii") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthmusic") / "seed0"
    report = sm.build_synthmusic(out, workers=2, **PARAMS)
    assert not report.cached and report.rendered == sum(SIZES.values()) and report.reused == 0
    return out


@pytest.fixture(scope="module")
def hashes(dataset) -> dict[str, str]:
    return _hashes(dataset)


def test_vocabularies():
    assert len(sm.GENRES) >= 6 and len(sm.MOODS) >= 4 and len(sm.INSTRUMENTS) >= 8
    programs = [sm.INSTRUMENT_PROGRAMS[i] for i in sm.INSTRUMENTS]
    assert len({p // 8 for p in programs}) >= 6  # GM families
    lo, hi = sm.TEMPO_RANGE
    assert sm.TEMPO_BIN_EDGES[sm.TEMPO_BINS[0]][0] == lo and sm.TEMPO_BIN_EDGES[sm.TEMPO_BINS[-1]][1] == hi
    assert all(lo <= a < b <= hi for a, b in sm.GENRE_TEMPO_RANGES.values())
    assert sm.tempo_bin(lo) == "slow" and sm.tempo_bin(hi) == "fast"
    assert set(sm.GENRES) <= set(sm.CS_VOCABULARY) and set(sm.MOODS) <= set(sm.CS_VOCABULARY)
    assert sm.soundfont_path().name == "TimGM6mb.sf2"


def test_same_seed_gives_identical_files(dataset, hashes, tmp_path):
    again = tmp_path / "again"
    sm.build_synthmusic(again, workers=1, **PARAMS)  # other worker count, same bytes
    assert _hashes(again) == hashes
    wavs = [k for k in hashes if k.endswith(".wav")]
    assert len(wavs) == sum(SIZES.values())


def test_different_seed_gives_different_data(hashes, tmp_path):
    other = tmp_path / "seed1"
    sm.build_synthmusic(other, workers=2, **{**PARAMS, "seed": 1})
    other_hashes = _hashes(other)
    assert set(other_hashes) == set(hashes)
    differing = [k for k in hashes if other_hashes[k] != hashes[k]]
    assert sum(k.endswith(".wav") for k in differing) >= 0.9 * sum(SIZES.values())
    assert "clotho_captions_development.csv" in differing and "factors_evaluation.csv" in differing


@pytest.mark.parametrize("split", sm.SPLITS)
def test_every_factor_value_in_every_split(dataset, split):
    rows = sm.read_factors(dataset, split)
    assert len(rows) == {"development": SIZES["n_train"], "validation": SIZES["n_val"],
                         "evaluation": SIZES["n_eval"]}[split]
    for column, vocabulary in (("genre", sm.GENRES), ("mood", sm.MOODS), ("lead_instrument", sm.INSTRUMENTS),
                               ("tempo_bin", sm.TEMPO_BINS)):
        counts = Counter(r[column] for r in rows)
        assert set(counts) == set(vocabulary), (column, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (column, counts)  # balanced
    for r in rows:
        lo, hi = sm.GENRE_TEMPO_RANGES[r["genre"]]
        assert lo <= r["tempo_bpm"] <= hi and sm.tempo_bin(r["tempo_bpm"]) == r["tempo_bin"]
        assert r["time_signature"] == "%d/%d" % sm.TIME_SIGNATURES[r["genre"]]
        assert r["mode"] in sm.MOOD_MODES[r["mood"]] and r["key"].split()[0] in sm.TONICS
        assert set(r["accompaniment"]) <= set(sm.ACCOMPANIMENT) and len(r["accompaniment"]) >= 2
        assert set(r["events"]) <= set(sm.EVENTS)
    assert len({r["tempo_bpm"] for r in rows}) == len(rows)  # continuous BPM


def test_balance_on_a_large_plan():
    specs = sm.plan_split(7, "development", 333, 10.0)
    for attr, vocabulary in (("genre", sm.GENRES), ("mood", sm.MOODS), ("lead_instrument", sm.INSTRUMENTS),
                             ("tempo_bin", sm.TEMPO_BINS)):
        counts = Counter(getattr(s, attr) for s in specs)
        assert set(counts) == set(vocabulary) and max(counts.values()) - min(counts.values()) <= 1
    assert all(sm.tempo_bin(s.tempo_bpm) == s.tempo_bin for s in specs)


def test_audio_is_32k_mono_pcm16_and_not_silent(dataset):
    for split in sm.SPLITS:
        files = sorted((dataset / f"clotho_audio_{split}").glob("*.wav"))
        assert len(files) == len(sm.read_factors(dataset, split))
        for path in files:
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (32000, 1, "PCM_16", "WAV")
            audio, _ = sf.read(str(path), dtype="float32")
            assert audio.shape == (int(SECONDS * 32000),)
            assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
            assert np.sqrt(np.mean(audio ** 2)) > 0.01, path.name
            assert np.abs(audio).max() > 0.2


def test_clotho_layout_and_text(dataset):
    for split in sm.SPLITS:
        captions = _read_csv(dataset / f"clotho_captions_{split}.csv")
        metadata = _read_csv(dataset / f"clotho_metadata_{split}.csv")
        factors = _read_csv(dataset / f"factors_{split}.csv")
        assert list(captions[0]) == ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
        assert list(metadata[0]) == ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples",
                                     "manufacturer", "license", "closed_tags", "description"]
        assert list(factors[0]) == sm.FACTOR_COLUMNS
        names = sorted(p.name for p in (dataset / f"clotho_audio_{split}").glob("*.wav"))
        assert sorted(r["file_name"] for r in captions) == names == sorted(r["file_name"] for r in metadata)
        for row, meta, fac in zip(captions, metadata, factors):
            texts = [row[f"caption_{i}"] for i in range(1, 6)]
            assert len(set(texts)) == 5
            for caption in texts:
                assert 8 <= len(caption.split()) <= 20 and caption[0].isupper() and caption.endswith(".")
                assert "  " not in caption and ".." not in caption
            keywords = meta["keywords"].split(";")
            assert len(keywords) >= 3 and all(k and k == k.strip() for k in keywords)
            assert set(filter(None, meta["closed_tags"].split(";"))) <= set(sm.CS_VOCABULARY)
            assert meta["description"] and meta["description"] == fac["description"]
            assert int(meta["sound_id"]) > 0
    # the text is ASCII (read with encoding="ascii" above) and names no factor in the file names
    assert all(re.fullmatch(r"synthmusic_(dev|val|eval)_\d{5}\.wav", n) for n in names)


def test_metadata_is_partly_redundant_and_noisy():
    """Statistics over a larger text-only plan: the kinds drop, add and corrupt as documented."""
    noise = smt.MetadataNoise()
    specs = sm.plan_split(5, "development", 400, 10.0)
    texts = [sm.clip_text(s, 5, noise) for s in specs]
    cs_genre = np.mean([s.genre in t["cs"] for s, t in zip(specs, texts)])
    os_bpm = np.mean([any(str(int(round(s.tempo_bpm))) in k for k in t["os"]) for s, t in zip(specs, texts)])
    os_irrelevant = np.mean([any(k in smt.OS_IRRELEVANT for k in t["os"]) for t in texts])
    fs_bpm = np.mean([str(int(round(s.tempo_bpm))) in t["fs"] for s, t in zip(specs, texts)])
    cap_bpm = np.mean([bool(re.search(r"\d", c)) for t in texts for c in t["captions"]])
    cap_genre = np.mean([any(w.lower() in c.lower() for w in smt.GENRE_PIECE[s.genre] + smt.GENRE_BACKING[s.genre])
                         for s, t in zip(specs, texts) for c in t["captions"]])
    fs_mood = np.mean([any(w in t["fs"].lower() for w in smt.MOOD_WORDS[s.mood]) for s, t in zip(specs, texts)])
    wrong_mood = np.mean([any(k in smt.OS_MOOD[m][0] for m in sm.MOODS if m != s.mood for k in t["os"])
                          for s, t in zip(specs, texts)])
    assert 0.7 < cs_genre < 0.95  # redundant but dropped sometimes
    assert 0.3 < os_bpm < 0.8 and fs_bpm > 0.6 and cap_bpm < 0.01  # BPM is metadata-only information
    assert 0.2 < cap_genre < 0.9 and fs_mood < 0.3
    assert os_irrelevant > 0.5 and 0.0 < wrong_mood < 0.2  # noise
    assert all(len(t["captions"]) == 5 for t in texts)


def test_midi_has_the_factors():
    spec = next(s for s in sm.plan_split(0, "validation", 12, 8.0) if s.genre == "waltz")
    pm = sm.compose_clip(spec)
    programs = {i.program for i in pm.instruments if not i.is_drum}
    assert sm.INSTRUMENT_PROGRAMS[spec.lead_instrument] in programs
    assert any(i.is_drum and i.notes for i in pm.instruments)
    assert (pm.time_signature_changes[0].numerator, pm.time_signature_changes[0].denominator) == (3, 4)
    assert math.isclose(pm.get_tempo_changes()[1][0], spec.tempo_bpm, rel_tol=1e-6)
    assert max(n.end for i in pm.instruments for n in i.notes) <= spec.seconds + 2.0


def test_second_call_does_nothing(dataset, hashes):
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    report = sm.build_synthmusic(dataset, workers=2, **PARAMS)
    assert report.cached and report.rendered == 0 and report.reused == 0
    assert report.seconds_elapsed < 5.0
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before
    assert _hashes(dataset) == hashes


def test_cli_reports_cached(dataset, capsys):
    from importlib.util import module_from_spec, spec_from_file_location

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_synthmusic.py"
    spec = spec_from_file_location("make_synthmusic", script)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(dataset), "--seed", "0", "--n-train", "16", "--n-val", "12",
                        "--n-eval", "12", "--seconds", "6", "--no-progress"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, named", [
    (dict(n_train=-1), "-1"),
    (dict(n_train=0, n_val=0, n_eval=0), "0"),
    (dict(n_val=2.5), "2.5"),
    (dict(seconds=1.0), "1.0"),
    (dict(seconds=float("nan")), "nan"),
    (dict(genres=["rock", "polka"]), "polka"),
    (dict(moods=["angry"]), "angry"),
    (dict(lead_instruments=["banjo"]), "banjo"),
    (dict(tempo_bins=["presto"]), "presto"),
    (dict(genres=["techno"], tempo_bins=["slow"]), "techno"),
    (dict(workers=0), "0"),
    (dict(seed=-3), "-3"),
])
def test_bad_input_raises_before_writing(tmp_path, kwargs, named):
    out = tmp_path / "never"
    args = {**PARAMS, **kwargs}
    with pytest.raises(ValueError, match=re.escape(named)):
        sm.generate_synthmusic(out, **args)
    assert not out.exists()


def test_refuses_to_overwrite_a_foreign_clotho_dir(tmp_path):
    (tmp_path / "clotho_captions_development.csv").write_text("file_name,caption_1\n")
    with pytest.raises(ValueError, match="refusing"):
        sm.generate_synthmusic(tmp_path, **PARAMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clotho_captions_development.csv"]


class _Crash(RuntimeError):
    """Stands for anything that stops a run midway (Ctrl-C, a killed worker, a full disk)."""


def test_interrupted_run_is_resumed(hashes, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    real = smr.render_to_file
    calls = []

    def crash_after_six(job):
        if len(calls) == 6:
            raise _Crash("simulated interruption")
        calls.append(job)
        return real(job)

    monkeypatch.setattr(smr, "render_to_file", crash_after_six)
    with pytest.raises(_Crash):
        sm.build_synthmusic(out, workers=1, **PARAMS)
    monkeypatch.setattr(smr, "render_to_file", real)
    assert not (out / sm.MANIFEST_NAME).exists()
    done = sorted(Path(job[1]) for job in calls)
    assert len(done) == 6
    # damage one completed clip and leave a stray temp file behind, as a crash mid-write would
    with open(done[0], "r+b") as f:
        f.truncate(1000)
    (done[1].parent / f".{done[1].name}.4242.tmp").write_bytes(b"RIFF")
    report = sm.build_synthmusic(out, workers=2, **PARAMS)
    assert report.reused == 5 and report.rendered == sum(SIZES.values()) - 5
    assert _hashes(out) == hashes  # no temp file left, everything byte-identical to a clean run


def test_missing_manifest_and_truncated_wav_are_repaired(dataset, hashes, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(dataset, out)
    (out / sm.MANIFEST_NAME).unlink()
    wav = sorted((out / "clotho_audio_validation").glob("*.wav"))[3]
    wav.write_bytes(wav.read_bytes()[:5000])
    (out / "clotho_captions_evaluation.csv").unlink()
    (out / ".clotho_metadata_development.csv.77.tmp").write_text("half")
    report = sm.build_synthmusic(out, workers=2, **PARAMS)
    assert not report.cached and report.rendered >= 1  # nothing is trusted without a record of it
    assert _hashes(out) == hashes


def test_tempo_of_the_audio_matches_the_label(dataset):
    librosa = pytest.importorskip("librosa")
    rows = sm.read_factors(dataset, "evaluation")
    agree = 0
    for row in rows:
        audio, rate = sf.read(str(dataset / "clotho_audio_evaluation" / row["file_name"]), dtype="float32")
        tempo, _ = librosa.beat.beat_track(y=audio, sr=rate)
        estimate, label = float(np.atleast_1d(tempo)[0]), row["tempo_bpm"]
        agree += any(abs(estimate - label * f) <= 0.04 * label * f for f in (1.0, 2.0, 0.5))
    # measured: 92 % of 300 default clips, 10-12 of 12 tiny ones; 70 % leaves room for the tracker
    assert agree / len(rows) >= 0.7, f"{agree}/{len(rows)}"


ROOT = Path(__file__).resolve().parents[1]
BUILD = ("import sys\nfrom hybrid_retrieval.data.synthmusic import build_synthmusic\n"
         "build_synthmusic(sys.argv[1], seed=0, n_train=int(sys.argv[2]), n_val=int(sys.argv[3]), "
         "n_eval=int(sys.argv[4]), seconds=float(sys.argv[5]), workers=int(sys.argv[6]), progress=False)\n")


def _builder(out: Path, n_train: int, n_val: int, n_eval: int, seconds: float, workers: int):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", BUILD, str(out), str(n_train), str(n_val), str(n_eval),
                             str(seconds), str(workers)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc; zombies do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_parent(tmp_path):
    import signal
    import time

    parent = _builder(tmp_path / "out", 48, 0, 0, 10.0, 2)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = _children(parent.pid)
    assert len(workers) == 2, parent.communicate()[1][-2000:]
    parent.send_signal(signal.SIGKILL)  # no cleanup in the parent runs
    parent.wait()
    deadline = time.monotonic() + 15
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them behind if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


def test_two_runs_into_one_folder_both_succeed(tmp_path, hashes):
    out = tmp_path / "shared"
    runs = [_builder(out, SIZES["n_train"], SIZES["n_val"], SIZES["n_eval"], SECONDS, 1) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    assert any("waiting for it to finish" in err for _, err in results)  # one waited for the other's lock
    assert _hashes(out) == hashes  # the folder is the one a single clean run writes
