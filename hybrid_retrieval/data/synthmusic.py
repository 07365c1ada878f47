"""SynthMusic: a generated music-and-caption benchmark with exactly known factors, offline.

Each clip is a short piece of music written as MIDI (with ``pretty_midi``) from four factors and
rendered with real sampled instruments: the General MIDI SoundFont ``TimGM6mb.sf2`` that ships in
the ``pretty_midi`` package, played by ``tinysoundfont`` (no fluidsynth, no system packages).

This module writes the dataset (text, CSVs, caching, the driver) and is the public entry point; the
factors and the planning of a split are in :mod:`~hybrid_retrieval.data.synthmusic_factors`, the
composition and rendering in :mod:`~hybrid_retrieval.data.synthmusic_render`, the text in
:mod:`~hybrid_retrieval.data.synthmusic_text`.

Factors (stored exactly in ``factors_{split}.csv``):

* genre (:data:`GENRES`): each with its own GM drum pattern (channel 10), bass line, harmony and
  rhythm idiom: rock backbeat with eighth-note bass, swing jazz with swung ride and walking bass,
  waltz in 3/4 (oom-pah-pah), bossa nova rim-click clave with syncopated chords, techno with a
  four-on-the-floor kick and off-beat bass, half-time ballad with arpeggios, march in 2/4 with snare
  rudiments and tuba, reggae one-drop with off-beat skank chords;
* mood (:data:`MOODS`): mode (major / lydian / minor / dorian / harmonic minor with diminished
  chords), register, dynamics (velocity and output level), articulation (staccato / legato) and
  melodic density;
* lead instrument (:data:`INSTRUMENTS`, GM programs in :data:`INSTRUMENT_PROGRAMS`);
* tempo: BPM drawn continuously in the genre's plausible range (:data:`GENRE_TEMPO_RANGES`, within
  :data:`TEMPO_RANGE`) and a bin label (:data:`TEMPO_BINS`, edges :data:`TEMPO_BIN_EDGES`).

Details that make a clip identifiable: key, accompanying instruments (bass, chords and an optional
extra layer, :data:`ACCOMPANIMENT_PROGRAMS`), events (:data:`EVENTS`: an unaccompanied solo intro, a
drum fill, a drum break, a crescendo or a fade-out), room reverb and output level.

Every value of every categorical factor appears in every split (with at least as many clips as
values), tempo bins are balanced too, and everything else of a clip comes from a generator seeded
by ``(seed, split, index)``, so generation is deterministic and parallel.

Text (captions, CS tags, OS keywords, FS description) is made by
:mod:`hybrid_retrieval.data.synthmusic_text`; its noise knobs are the dataclass
:class:`~hybrid_retrieval.data.synthmusic_text.MetadataNoise` (documented there: genre, mood,
instrument and tempo bin are redundant with the audio but dropped at random per kind; BPM, key and
accompaniment are complementary metadata; OS tags carry synonyms, misspellings, irrelevant and
occasionally wrong tags).

Output (Clotho v2 layout, read by the Clotho loader)::

    clotho_captions_{split}.csv   file_name,caption_1,...,caption_5
    clotho_metadata_{split}.csv   file_name,keywords,sound_id,sound_link,start_end_samples,
                                  manufacturer,license,closed_tags,description
    clotho_audio_{split}/*.wav    32 kHz mono 16-bit PCM
    factors_{split}.csv           exact labels
    synthmusic_manifest.json      parameters, version and file hashes; written last

for split in development (train), validation and evaluation. Every file is written to a temp file
in its directory and renamed into place. A second run with the same parameters checks the
manifest and the size of every file and renders nothing. A run that changes the directory first
deletes the manifest; an interrupted run is resumed from the clips recorded as complete (spec and
SHA-256) in ``.synthmusic_progress/done.jsonl`` or in the previous manifest, each re-hashed before it
is reused; anything else is rendered again. The marker file ``.synthmusic`` tells a SynthMusic
directory from a foreign Clotho copy, which is never overwritten. Files are byte-identical for the
same parameters on the same platform and library versions (the manifest records the SoundFont hash
and the tinysoundfont and pretty_midi versions; a change of any of them re-renders).
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from filelock import FileLock, Timeout

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.data import synthmusic_text as text
from hybrid_retrieval.data.clotho import CLOTHO_ALIASES, load_clotho
from hybrid_retrieval.data.spec import DatasetSpec
from hybrid_retrieval.data.synthmusic_factors import (
    ACCOMPANIMENT,
    ACCOMPANIMENT_PROGRAMS,
    EVENTS,
    GENRE_TEMPO_RANGES,
    GENRES,
    INSTRUMENT_PROGRAMS,
    INSTRUMENTS,
    MOOD_MODES,
    MOODS,
    SPLIT_CODE,
    SPLITS,
    TEMPO_BIN_EDGES,
    TEMPO_BINS,
    TEMPO_RANGE,
    TIME_SIGNATURES,
    TONICS,
    VERSION,
    ClipSpec,
    genre_bin_range,
    plan_split,
    split_rng,
    tempo_bin,
)
from hybrid_retrieval.data.synthmusic_render import (
    compose_clip,
    render_chunk,
    render_clip,
    render_midi,
    soundfont_bytes,
    soundfont_path,
)
from hybrid_retrieval.data.synthmusic_text import MetadataNoise
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.hub import check_space, check_writable, write_atomic

# The public API of SynthMusic, including what the factor and render modules define.
__all__ = [
    "ACCOMPANIMENT", "ACCOMPANIMENT_PROGRAMS", "CS_VOCABULARY", "EVENTS", "FACTOR_COLUMNS", "GENRE_TEMPO_RANGES",
    "GENRES", "INSTRUMENT_PROGRAMS", "INSTRUMENTS", "MANIFEST_NAME", "MOOD_MODES", "MOODS", "SPLITS",
    "TEMPO_BIN_EDGES", "TEMPO_BINS", "TEMPO_RANGE", "TIME_SIGNATURES", "TONICS", "ClipSpec", "MetadataNoise",
    "SynthMusicReport", "build_synthmusic", "clip_text", "compose_clip", "generate_synthmusic", "plan_split",
    "read_factors", "render_clip", "render_midi", "soundfont_path", "tempo_bin", "validate_parameters",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "synthmusic_manifest.json"
PROGRESS_DIR = ".synthmusic_progress"
MARKER_NAME = ".synthmusic"  # written first: this directory is SynthMusic's to rewrite
LOCK_NAME = ".synthmusic.lock"  # held by the one run writing the directory
MAX_SECONDS = 300.0

CAPTION_COLUMNS = ["file_name"] + [f"caption_{i}" for i in range(1, text.CAPTIONS_PER_CLIP + 1)]
METADATA_COLUMNS = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                    "license", "closed_tags", "description"]
FACTOR_COLUMNS = ["file_name", "genre", "mood", "lead_instrument", "accompaniment", "tempo_bpm", "tempo_bin",
                  "key", "mode", "time_signature", "events", "closed_tags", "description"]
LICENSE_TEXT = "synthetic, rendered with TimGM6mb.sf2 from the pretty_midi package (see its license)"

text.check_lexicon(GENRES, MOODS, INSTRUMENTS, TEMPO_BINS, ACCOMPANIMENT)
CS_VOCABULARY = text.cs_vocabulary(GENRES, MOODS, INSTRUMENTS, TEMPO_BINS, ACCOMPANIMENT)


# ------------------------------------------------------------------------------------------------
# Text and CSVs


def clip_text(spec: ClipSpec, seed: int, noise: MetadataNoise) -> dict:
    """Captions, CS tags, OS keywords and FS description of a clip (deterministic per clip)."""
    rng = split_rng(seed, spec.split, 2, spec.index)
    vocab = (GENRES, MOODS, INSTRUMENTS, TEMPO_BINS)
    return {
        "captions": text.make_captions(spec, rng, noise),
        "cs": text.make_closed_tags(spec, rng, noise, vocab),
        "os": text.make_open_tags(spec, rng, noise, vocab),
        "fs": text.make_description(spec, rng, noise),
        "manufacturer": text.UPLOADERS[int(rng.integers(len(text.UPLOADERS)))],
    }


def _csv_bytes(columns: list[str], rows: Iterable[list]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(row)
    return buf.getvalue().encode("ascii")


def _split_csvs(split: str, specs: list[ClipSpec], texts: list[dict]) -> dict[str, bytes]:
    n_samples = lambda s: int(round(s.seconds * SAMPLE_RATE))  # noqa: E731
    captions = [[s.file_name, *t["captions"]] for s, t in zip(specs, texts)]
    metadata = [[s.file_name, ";".join(t["os"]), 1_000_000 * (SPLIT_CODE[split] + 1) + s.index,
                 f"synthmusic:{split}/{s.index:05d}", f"[0, {n_samples(s)}]", t["manufacturer"], LICENSE_TEXT,
                 ";".join(t["cs"]), t["fs"]] for s, t in zip(specs, texts)]
    factors = [[s.file_name, s.genre, s.mood, s.lead_instrument, ";".join(s.accompaniment), f"{s.tempo_bpm:.1f}",
                s.tempo_bin, s.key, s.mode, s.time_signature, ";".join(s.events) or "none", ";".join(t["cs"]), t["fs"]]
               for s, t in zip(specs, texts)]
    return {
        f"clotho_captions_{split}.csv": _csv_bytes(CAPTION_COLUMNS, captions),
        f"clotho_metadata_{split}.csv": _csv_bytes(METADATA_COLUMNS, metadata),
        f"factors_{split}.csv": _csv_bytes(FACTOR_COLUMNS, factors),
    }


def read_factors(out_dir: str | Path, split: str) -> list[dict]:
    """The rows of factors_{split}.csv, with tempo_bpm as float and list-valued columns split."""
    rows = []
    with open(Path(out_dir) / f"factors_{split}.csv", newline="", encoding="ascii") as f:
        for row in csv.DictReader(f):
            row["tempo_bpm"] = float(row["tempo_bpm"])
            row["accompaniment"] = [a for a in row["accompaniment"].split(";") if a]
            row["events"] = [] if row["events"] == "none" else row["events"].split(";")
            row["closed_tags"] = [a for a in row["closed_tags"].split(";") if a]
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# Validation, caching and the driver


@dataclass
class SynthMusicReport:
    """What a call of :func:`build_synthmusic` did."""

    out_dir: Path
    cached: bool  # True when the manifest matched and nothing was written
    rendered: int  # clips rendered by this call
    reused: int  # clips kept from an earlier (possibly interrupted) run after hash verification
    seconds_elapsed: float


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInputError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise BadInputError(f"{name} must be a non-negative integer, got {value}")
    return int(value)


def _check_choice(name: str, values, vocabulary: Sequence[str]) -> tuple[str, ...]:
    if values is None:
        return tuple(vocabulary)
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise BadInputError(f"{name} must name at least one of {list(vocabulary)}")
    for v in values:
        if v not in vocabulary:
            singular = name[:-1] if name.endswith("s") else name
            raise BadInputError(f"unknown {singular} value {v!r}; choose from {list(vocabulary)}")
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise BadInputError(f"{name} lists {dup!r} more than once")
    return tuple(v for v in vocabulary if v in values)  # canonical order


def _min_seconds(genres: Sequence[str], tempo_bins: Sequence[str]) -> float:
    """Length of one bar at the slowest tempo any chosen genre can have."""
    longest = 0.0
    for g in genres:
        lows = [r[0] for b in tempo_bins if (r := genre_bin_range(g, b)) is not None]
        if lows:
            longest = max(longest, TIME_SIGNATURES[g][0] * 60.0 / min(lows))
    return longest


def validate_parameters(seed, n_train, n_val, n_eval, seconds, workers, genres, moods, lead_instruments,
                        tempo_bins, noise) -> dict:
    """Check every parameter (raising one ValueError naming the bad value) and return them normalised."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = {"development": _check_count("n_train", n_train), "validation": _check_count("n_val", n_val),
             "evaluation": _check_count("n_eval", n_eval)}
    if sum(sizes.values()) == 0:
        raise BadInputError("n_train + n_val + n_eval is 0: nothing to generate")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise BadInputError(f"workers must be a positive integer or None, got {workers!r}")
    genres = _check_choice("genres", genres, GENRES)
    moods = _check_choice("moods", moods, MOODS)
    lead_instruments = _check_choice("lead_instruments", lead_instruments, INSTRUMENTS)
    tempo_bins = _check_choice("tempo_bins", tempo_bins, TEMPO_BINS)
    for g in genres:
        if not any(genre_bin_range(g, b) for b in tempo_bins):
            raise BadInputError(f"genre {g!r} (tempo {GENRE_TEMPO_RANGES[g]} BPM) cannot be played in tempo bins "
                             f"{list(tempo_bins)}")
    for b in tempo_bins:
        if not any(genre_bin_range(g, b) for g in genres):
            raise BadInputError(f"tempo bin {b!r} {TEMPO_BIN_EDGES[b]} is not reachable by genres {list(genres)}")
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise BadInputError(f"seconds must be a number, got {seconds!r}") from None
    minimum = _min_seconds(genres, tempo_bins)
    if not math.isfinite(seconds) or seconds < minimum:
        raise BadInputError(f"seconds={seconds!r} is too short: one bar at the slowest tempo needs {minimum:.2f} s")
    if seconds > MAX_SECONDS:
        raise BadInputError(f"seconds={seconds!r} is longer than the supported {MAX_SECONDS:.0f} s")
    if noise is not None and not isinstance(noise, MetadataNoise):
        raise BadInputError(f"noise must be a MetadataNoise, got {type(noise).__name__}")
    return dict(seed=int(seed), sizes=sizes, seconds=seconds, genres=list(genres), moods=list(moods),
                lead_instruments=list(lead_instruments), tempo_bins=list(tempo_bins),
                noise=(noise or MetadataNoise()).to_dict())


def _environment() -> dict:
    from importlib.metadata import version

    return {"soundfont_sha256": hashlib.sha256(soundfont_bytes()).hexdigest(), "sample_rate": SAMPLE_RATE,
            "tinysoundfont": version("tinysoundfont"), "pretty_midi": version("pretty_midi")}


def _sha256_file(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _manifest_matches(out_dir: Path, params: dict) -> bool:
    """True when the manifest has these parameters and every file it lists is present, same size."""
    try:
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("version") != VERSION or manifest.get("params") != params:
        return False
    for rel, info in manifest.get("files", {}).items():
        try:
            if (out_dir / rel).stat().st_size != info["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    for split, n in params["sizes"].items():  # the manifest must list exactly the expected clips
        listed = [r for r in manifest.get("files", {}) if r.startswith(f"clotho_audio_{split}/")]
        if len(listed) != n:
            return False
    return True


def _trusted_entries(out_dir: Path) -> dict[str, dict]:
    """Clips an earlier run recorded as complete: relative path -> {spec, sha256, bytes}."""
    entries: dict[str, dict] = {}
    try:
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
        for rel, info in manifest.get("files", {}).items():
            if rel.endswith(".wav") and isinstance(info, dict) and "spec" in info:
                entries[rel] = info
    except (OSError, ValueError, AttributeError):
        pass
    progress = out_dir / PROGRESS_DIR
    if progress.is_dir():
        for path in sorted(progress.glob("*.jsonl")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    info = json.loads(line)
                    entries[info["path"]] = {"spec": info["spec"], "sha256": info["sha256"], "bytes": info["bytes"]}
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption
    return entries


_OWN_WAV = re.compile(r"^synthmusic_(dev|val|eval)_\d{5}\.wav$")
_OWN_TMP = re.compile(r"^\.(synthmusic_|clotho_|factors_).+\.tmp$")  # hub.atomic_path's temp files of ours


def _clean_directory(out_dir: Path, keep: set[str]) -> None:
    """Remove our temp files anywhere in the layout and our own clips that are not in this set."""
    for path in out_dir.glob(".*.tmp"):
        if _OWN_TMP.match(path.name):
            path.unlink(missing_ok=True)
    for split in SPLITS:
        audio_dir = out_dir / f"clotho_audio_{split}"
        if not audio_dir.is_dir():
            continue
        for path in audio_dir.iterdir():
            stale = _OWN_WAV.match(path.name) and f"clotho_audio_{split}/{path.name}" not in keep
            if _OWN_TMP.match(path.name) or stale:
                path.unlink(missing_ok=True)


def build_synthmusic(out_dir: str | Path, seed: int = 0, n_train: int = 1200, n_val: int = 200, n_eval: int = 300,
                     seconds: float = 10.0, workers: int | None = None, progress: bool = True,
                     genres: Sequence[str] | None = None, moods: Sequence[str] | None = None,
                     lead_instruments: Sequence[str] | None = None, tempo_bins: Sequence[str] | None = None,
                     noise: MetadataNoise | None = None) -> SynthMusicReport:
    """Generate (or verify and reuse) SynthMusic in `out_dir`; see :func:`generate_synthmusic`."""
    t0 = time.perf_counter()
    params = validate_parameters(seed, n_train, n_val, n_eval, seconds, workers, genres, moods, lead_instruments,
                                 tempo_bins, noise)
    noise = noise or MetadataNoise()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"out_dir {out_dir} exists and is not a directory")
    params["environment"] = _environment()
    if _manifest_matches(out_dir, params):
        log.info("SynthMusic in %s is complete and matches the parameters; nothing to do", out_dir)
        return SynthMusicReport(out_dir, True, 0, 0, time.perf_counter() - t0)
    if out_dir.is_dir() and not (out_dir / MARKER_NAME).exists() and not (out_dir / MANIFEST_NAME).exists() \
            and any(out_dir.glob("clotho_*")):
        raise BadInputError(f"{out_dir} holds a Clotho-style dataset that SynthMusic did not write; "
                         "refusing to overwrite it")
    check_writable(out_dir, directory=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One writer at a time: a second run into the same folder waits for the first, then finds the
    # dataset complete (or resumes what the first left).
    lock = FileLock(out_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another run is writing SynthMusic into %s (it holds %s); waiting for it to finish",
                    out_dir, out_dir / LOCK_NAME)
        lock.acquire()
    try:
        if _manifest_matches(out_dir, params):
            log.info("SynthMusic in %s was completed by the other run; nothing to do", out_dir)
            return SynthMusicReport(out_dir, True, 0, 0, time.perf_counter() - t0)
        return _build_locked(out_dir, params, noise, workers, progress, t0)
    finally:
        lock.release()


def _build_locked(out_dir: Path, params: dict, noise: MetadataNoise, workers: int | None, progress: bool,
                  t0: float) -> SynthMusicReport:
    """The body of build_synthmusic, run while holding the folder's lock."""
    # Plan everything in memory first (factors and text are cheap).
    plans = {split: plan_split(params["seed"], split, n, params["seconds"], params["genres"], params["moods"],
                               params["lead_instruments"], params["tempo_bins"])
             for split, n in params["sizes"].items()}
    texts = {split: [clip_text(s, params["seed"], noise) for s in specs] for split, specs in plans.items()}

    (out_dir / MARKER_NAME).write_text("SynthMusic output directory (hybrid_retrieval.data.synthmusic)\n")
    trusted = _trusted_entries(out_dir)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # the directory is about to change
    progress_dir = out_dir / PROGRESS_DIR
    progress_dir.mkdir(exist_ok=True)
    for split in SPLITS:
        (out_dir / f"clotho_audio_{split}").mkdir(exist_ok=True)

    wanted = {f"clotho_audio_{s.split}/{s.file_name}": s for specs in plans.values() for s in specs}
    _clean_directory(out_dir, set(wanted))
    done: dict[str, dict] = {}
    todo: list[tuple[dict, str]] = []
    for rel, spec in wanted.items():
        info = trusted.get(rel)
        path = out_dir / rel
        if info and info.get("spec") == spec.spec_hash() and path.is_file() \
                and path.stat().st_size == info.get("bytes") and _sha256_file(path) == info.get("sha256"):
            done[rel] = {"spec": info["spec"], "sha256": info["sha256"], "bytes": info["bytes"]}
        else:
            todo.append((asdict(spec), str(path)))
    reused = len(done)
    check_space(out_dir, out_dir, len(todo) * _clip_bytes(params["seconds"]))
    # Record the verified clips so an interruption from here on keeps them.
    journal = progress_dir / "done.jsonl"
    write_atomic(journal, "".join(json.dumps({"path": r, **i}) + "\n" for r, i in done.items()).encode())
    for stale in progress_dir.iterdir():
        if stale != journal:
            stale.unlink(missing_ok=True)

    if todo:
        _render_all(out_dir, todo, workers, progress, journal, done)

    files: dict[str, dict] = {}
    for split, specs in plans.items():
        for name, data in _split_csvs(split, specs, texts[split]).items():
            write_atomic(out_dir / name, data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    files.update({rel: done[rel] for rel in sorted(wanted)})
    manifest = {"name": "SynthMusic", "version": VERSION, "params": params, "cs_vocabulary": list(CS_VOCABULARY),
                "files": files}
    write_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
    for path in progress_dir.glob("*"):
        path.unlink(missing_ok=True)
    progress_dir.rmdir()
    elapsed = time.perf_counter() - t0
    log.info("SynthMusic: rendered %d clips, reused %d, in %.1f s -> %s", len(todo), reused, elapsed, out_dir)
    return SynthMusicReport(out_dir, False, len(todo), reused, elapsed)


def _clip_bytes(seconds: float) -> int:
    """Size of one rendered clip: 16-bit mono PCM and its WAV header."""
    return int(seconds * SAMPLE_RATE) * 2 + 44


def _die_with(parent: int) -> None:
    """Worker initializer: exit as soon as the parent process is gone. A worker blocked on the
    pool's queue never notices a killed parent (it holds its own end of the pipe), so without this
    a killed run leaves its workers running forever. Polling the parent id is portable, where
    Linux's PR_SET_PDEATHSIG would need ctypes and watches the forking thread, not the process."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _render_all(out_dir: Path, todo: list[tuple[dict, str]], workers: int | None, progress: bool, journal: Path,
                done: dict[str, dict]) -> None:
    from tqdm import tqdm

    workers = min(workers or os.cpu_count() or 1, len(todo))
    bar = tqdm(total=len(todo), desc="SynthMusic", unit="clip", disable=not progress)
    with open(journal, "a") as log_file:
        def record(results):
            for path, spec_hash, sha, nbytes in results:
                rel = Path(path).relative_to(out_dir).as_posix()
                done[rel] = {"spec": spec_hash, "sha256": sha, "bytes": nbytes}
                log_file.write(json.dumps({"path": rel, **done[rel]}) + "\n")
            log_file.flush()
            bar.update(len(results))

        try:
            if workers <= 1 or len(todo) < 4:
                for job in todo:
                    record(render_chunk([job]))
            else:
                size = max(1, min(8, len(todo) // (workers * 4)))
                chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
                # fork where available: works from scripts without a __main__ guard and from notebooks;
                # the workers only run numpy, scipy and tinysoundfont (no threads of the parent).
                methods = multiprocessing.get_all_start_methods()
                ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with,
                                            initargs=(os.getpid(),)) as pool:
                    futures = [pool.submit(render_chunk, c) for c in chunks]
                    try:
                        for future in cf.as_completed(futures):
                            record(future.result())
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()


def generate_synthmusic(out_dir: str | Path, seed: int = 0, n_train: int = 1200, n_val: int = 200,
                        n_eval: int = 300, seconds: float = 10.0, workers: int | None = None, progress: bool = True,
                        genres: Sequence[str] | None = None, moods: Sequence[str] | None = None,
                        lead_instruments: Sequence[str] | None = None, tempo_bins: Sequence[str] | None = None,
                        noise: MetadataNoise | None = None) -> Path:
    """Generate the SynthMusic benchmark in `out_dir` (Clotho v2 layout) and return `out_dir`.

    n_train / n_val / n_eval: clips of the development / validation / evaluation split (a split
    may be empty, not all of them). seconds: clip length (at least one bar at the slowest tempo).
    workers: processes (default os.cpu_count()). genres / moods / lead_instruments / tempo_bins:
    optional subsets of the vocabularies. noise: the text knobs (:class:`MetadataNoise`).
    Bad parameters raise ValueError before anything is written. Same parameters give
    byte-identical files; a complete earlier run is detected from its manifest and left alone.
    """
    return build_synthmusic(out_dir, seed=seed, n_train=n_train, n_val=n_val, n_eval=n_eval, seconds=seconds,
                            workers=workers, progress=progress, genres=genres, moods=moods,
                            lead_instruments=lead_instruments, tempo_bins=tempo_bins, noise=noise).out_dir


def load_synthmusic(root: str | Path, split: str, *, require_audio: bool = True) -> list:
    """The items of a SynthMusic split (written in Clotho's layout, so Clotho's loader reads it)."""
    return load_clotho(root, split, require_audio=require_audio, name="synthmusic", freesound=False)


SYNTHMUSIC = DatasetSpec("synthmusic", SPLITS, load_synthmusic, CLOTHO_ALIASES, sample_rate=SAMPLE_RATE,
                         origin="generated locally (scripts/make_synthmusic.py), not downloaded")
