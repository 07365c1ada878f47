"""SynthMusic: a generated music-and-caption benchmark with exactly known factors, offline.

Each clip is a short piece of music written as MIDI (with ``pretty_midi``) from four factors and
rendered with real sampled instruments: the General MIDI SoundFont ``TimGM6mb.sf2`` that ships in
the ``pretty_midi`` package, played by ``tinysoundfont`` (no fluidsynth, no system packages).

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

Categorical factors are assigned per split by shuffled cycling (every value appears in every split
with at least as many clips as values; counts differ by at most one); tempo bins are matched to
genres with feasible tempo ranges so that they are balanced too. Everything else of a clip comes
from a generator seeded by ``(seed, split, index)``, so generation is deterministic and parallel.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.data import synthmusic_text as text
from hybrid_retrieval.data.synthmusic_text import MetadataNoise

log = logging.getLogger(__name__)

VERSION = 1
MANIFEST_NAME = "synthmusic_manifest.json"
PROGRESS_DIR = ".synthmusic_progress"
MARKER_NAME = ".synthmusic"  # written first: this directory is SynthMusic's to rewrite

SPLITS = ("development", "validation", "evaluation")
_SPLIT_CODE = {"development": 0, "validation": 1, "evaluation": 2}
_SPLIT_SHORT = {"development": "dev", "validation": "val", "evaluation": "eval"}

GENRES = ("rock", "swing jazz", "waltz", "bossa nova", "techno", "ballad", "march", "reggae")
MOODS = ("happy", "sad", "tense", "calm")
INSTRUMENT_PROGRAMS = {
    "piano": 0, "vibraphone": 11, "nylon guitar": 24, "violin": 40, "trumpet": 56,
    "alto sax": 65, "flute": 73, "clarinet": 71, "organ": 16, "synth lead": 80,
}
INSTRUMENTS = tuple(INSTRUMENT_PROGRAMS)
# Comfortable melody range (MIDI pitches) of each lead instrument.
INSTRUMENT_RANGES = {
    "piano": (55, 88), "vibraphone": (53, 89), "nylon guitar": (52, 81), "violin": (55, 93),
    "trumpet": (55, 82), "alto sax": (49, 80), "flute": (60, 96), "clarinet": (50, 86),
    "organ": (48, 84), "synth lead": (48, 88),
}

TEMPO_RANGE = (60.0, 180.0)
TEMPO_BINS = ("slow", "medium", "fast")
TEMPO_BIN_EDGES = {"slow": (60.0, 90.0), "medium": (90.0, 130.0), "fast": (130.0, 180.0)}
GENRE_TEMPO_RANGES = {
    "rock": (80.0, 160.0), "swing jazz": (70.0, 180.0), "waltz": (72.0, 180.0), "bossa nova": (70.0, 145.0),
    "techno": (115.0, 150.0), "ballad": (60.0, 105.0), "march": (95.0, 140.0), "reggae": (60.0, 110.0),
}
TIME_SIGNATURES = {g: (4, 4) for g in GENRES} | {"waltz": (3, 4), "march": (2, 4)}

ACCOMPANIMENT_PROGRAMS = {
    "acoustic bass": 32, "electric bass": 33, "synth bass": 38, "tuba": 58, "piano": 0, "electric piano": 4,
    "jazz guitar": 26, "clean electric guitar": 27, "distortion guitar": 30, "nylon guitar": 24, "strings": 48,
    "accordion": 21, "brass section": 61, "synth pad": 89, "organ": 16, "saw synth": 81, "glockenspiel": 9,
}
ACCOMPANIMENT = tuple(ACCOMPANIMENT_PROGRAMS)
# genre -> (bass choices, chord-instrument choices, optional extra layer choices)
GENRE_ENSEMBLES = {
    "rock": (("electric bass",), ("distortion guitar", "clean electric guitar"), ("organ", "strings")),
    "swing jazz": (("acoustic bass",), ("piano", "jazz guitar"), ()),
    "waltz": (("acoustic bass", "tuba"), ("accordion", "strings", "piano"), ("strings", "glockenspiel")),
    "bossa nova": (("acoustic bass",), ("nylon guitar", "electric piano", "piano"), ("strings", "synth pad")),
    "techno": (("synth bass",), ("saw synth", "synth pad"), ("synth pad", "strings")),
    "ballad": (("electric bass", "acoustic bass"), ("piano", "electric piano"), ("strings", "synth pad")),
    "march": (("tuba",), ("brass section",), ("glockenspiel", "strings")),
    "reggae": (("electric bass",), ("clean electric guitar", "organ"), ("organ", "piano")),
}
EXTRA_LAYER_PROB = 0.45

MOOD_MODES = {"happy": ("major",), "calm": ("major", "lydian"), "sad": ("minor", "dorian"),
              "tense": ("harmonic minor",)}
MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "lydian": (0, 2, 4, 6, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10), "harmonic minor": (0, 2, 3, 5, 7, 8, 11),
}
TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

EVENTS = ("solo", "drum fill", "break", "crescendo", "fade-out")
EVENT_PROBS = {"solo": 0.15, "drum fill": 0.35, "break": 0.15, "crescendo": 0.12, "fade-out": 0.15}

MAX_SECONDS = 300.0

CAPTION_COLUMNS = ["file_name"] + [f"caption_{i}" for i in range(1, text.CAPTIONS_PER_CLIP + 1)]
METADATA_COLUMNS = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                    "license", "closed_tags", "description"]
FACTOR_COLUMNS = ["file_name", "genre", "mood", "lead_instrument", "accompaniment", "tempo_bpm", "tempo_bin",
                  "key", "mode", "time_signature", "events", "closed_tags", "description"]
LICENSE_TEXT = "synthetic, rendered with TimGM6mb.sf2 from the pretty_midi package (see its license)"

text.check_lexicon(GENRES, MOODS, INSTRUMENTS, TEMPO_BINS, ACCOMPANIMENT)
CS_VOCABULARY = text.cs_vocabulary(GENRES, MOODS, INSTRUMENTS, TEMPO_BINS, ACCOMPANIMENT)


def tempo_bin(bpm: float) -> str:
    """The tempo bin of a BPM value (bins are half-open, the last one includes its upper edge)."""
    for name in TEMPO_BINS:
        lo, hi = TEMPO_BIN_EDGES[name]
        if lo <= bpm < hi:
            return name
    if bpm == TEMPO_BIN_EDGES[TEMPO_BINS[-1]][1]:
        return TEMPO_BINS[-1]
    raise ValueError(f"tempo {bpm} BPM is outside {TEMPO_RANGE}")


def soundfont_path() -> Path:
    """The General MIDI SoundFont shipped inside the pretty_midi package."""
    import pretty_midi

    path = Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise FileNotFoundError(f"TimGM6mb.sf2 not found in the pretty_midi package at {path}")
    return path


# ------------------------------------------------------------------------------------------------
# Planning: factors of every clip of a split


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip; the audio is a pure function of it."""

    split: str
    index: int
    file_name: str
    genre: str
    mood: str
    lead_instrument: str
    accompaniment: tuple[str, ...]
    tempo_bpm: float
    tempo_bin: str
    tonic: str
    mode: str
    key: str
    time_signature: str
    events: tuple[str, ...]
    seconds: float
    render_seed: int

    def spec_hash(self) -> str:
        payload = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _seed_sequence(seed: int, split: str, stream: int, index: int = 0) -> np.random.SeedSequence:
    # stream 0: split-level factor assignment, 1: per-clip details/audio, 2: per-clip text
    return np.random.SeedSequence([0x5EED_AD10, seed, _SPLIT_CODE[split], stream, index])


def _rng(seed: int, split: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(_seed_sequence(seed, split, stream, index)))


def _balanced(values: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """Shuffled cycling: blocks of random permutations, cut to n, then shuffled over the clips."""
    out: list[str] = []
    while len(out) < n:
        out.extend(values[i] for i in rng.permutation(len(values)))
    out = out[:n]
    return [out[i] for i in rng.permutation(n)]


def _bin_range(genre: str, bin_name: str) -> tuple[float, float] | None:
    g_lo, g_hi = GENRE_TEMPO_RANGES[genre]
    b_lo, b_hi = TEMPO_BIN_EDGES[bin_name]
    lo, hi = max(g_lo, b_lo), min(g_hi, b_hi)
    return (lo, hi) if hi - lo >= 1.0 else None


def _match_tempo_bins(genres: list[str], bins: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Give every clip a tempo bin its genre can play, with balanced bin counts where possible.

    Capacitated bipartite matching (augmenting paths) of clips to bins whose capacities come from
    shuffled cycling; clips left unmatched (only possible for restricted genre sets) get a random
    feasible bin.
    """
    n = len(genres)
    capacity = {b: 0 for b in bins}
    for b in _balanced(list(bins), n, rng):
        capacity[b] += 1
    feasible = [[b for b in bins if _bin_range(g, b) is not None] for g in genres]
    members: dict[str, list[int]] = {b: [] for b in bins}
    assigned: list[str | None] = [None] * n

    def augment(clip: int, visited: set[str]) -> bool:
        options = list(feasible[clip])
        options = [options[i] for i in rng.permutation(len(options))]
        for b in options:
            if b in visited:
                continue
            visited.add(b)
            if len(members[b]) < capacity[b]:
                members[b].append(clip)
                assigned[clip] = b
                return True
            for other in list(members[b]):
                if augment(other, visited):
                    members[b].remove(other)
                    members[b].append(clip)
                    assigned[clip] = b
                    return True
        return False

    for clip in rng.permutation(n):
        clip = int(clip)
        if not augment(clip, set()):
            assigned[clip] = feasible[clip][int(rng.integers(len(feasible[clip])))]
    return [a for a in assigned if a is not None]


def _choose_events(rng: np.random.Generator, n_bars: int) -> tuple[str, ...]:
    events = []
    if n_bars >= 3 and rng.random() < EVENT_PROBS["solo"]:
        events.append("solo")
    if n_bars >= 2 and rng.random() < EVENT_PROBS["drum fill"]:
        events.append("drum fill")
    if n_bars >= 4 and rng.random() < EVENT_PROBS["break"]:
        events.append("break")
    u = rng.random()
    if u < EVENT_PROBS["crescendo"]:
        events.append("crescendo")
    elif u < EVENT_PROBS["crescendo"] + EVENT_PROBS["fade-out"]:
        events.append("fade-out")
    return tuple(events)


def _choose_accompaniment(rng: np.random.Generator, genre: str, lead: str) -> tuple[str, ...]:
    basses, chords, extras = GENRE_ENSEMBLES[genre]
    lead_program = INSTRUMENT_PROGRAMS[lead]
    bass = basses[int(rng.integers(len(basses)))]
    chord_options = [c for c in chords if ACCOMPANIMENT_PROGRAMS[c] != lead_program]
    chord_options = chord_options or ["piano" if lead != "piano" else "strings"]
    chord = chord_options[int(rng.integers(len(chord_options)))]
    out = [bass, chord]
    extra_options = [e for e in extras if e in ACCOMPANIMENT_PROGRAMS and e != chord
                     and ACCOMPANIMENT_PROGRAMS[e] != lead_program]
    if extra_options and rng.random() < EXTRA_LAYER_PROB:
        out.append(extra_options[int(rng.integers(len(extra_options)))])
    return tuple(out)


def plan_split(seed: int, split: str, n: int, seconds: float, genres: Sequence[str] = GENRES,
               moods: Sequence[str] = MOODS, instruments: Sequence[str] = INSTRUMENTS,
               tempo_bins: Sequence[str] = TEMPO_BINS) -> list[ClipSpec]:
    """The factors of the `n` clips of one split (no audio; cheap)."""
    rng = _rng(seed, split, 0)
    genre_list = _balanced(list(genres), n, rng)
    mood_list = _balanced(list(moods), n, rng)
    lead_list = _balanced(list(instruments), n, rng)
    bin_list = _match_tempo_bins(genre_list, tempo_bins, rng)
    specs = []
    for i in range(n):
        crng = _rng(seed, split, 1, i)
        genre, mood, lead, bin_name = genre_list[i], mood_list[i], lead_list[i], bin_list[i]
        lo, hi = _bin_range(genre, bin_name)  # type: ignore[misc]
        bpm = max(lo, math.floor(float(crng.uniform(lo, hi)) * 10.0) / 10.0)  # 0.1 BPM resolution, < hi
        assert tempo_bin(bpm) == bin_name
        tonic = TONICS[int(crng.integers(12))]
        modes = MOOD_MODES[mood]
        mode = modes[int(crng.integers(len(modes)))]
        key = f"{tonic} {'major' if mode in ('major', 'lydian') else 'minor'}"
        num, den = TIME_SIGNATURES[genre]
        bar_seconds = num * 60.0 / bpm
        events = _choose_events(crng, int(seconds // bar_seconds))
        specs.append(ClipSpec(
            split=split, index=i, file_name=f"synthmusic_{_SPLIT_SHORT[split]}_{i:05d}.wav", genre=genre, mood=mood,
            lead_instrument=lead, accompaniment=_choose_accompaniment(crng, genre, lead), tempo_bpm=bpm,
            tempo_bin=bin_name, tonic=tonic, mode=mode, key=key, time_signature=f"{num}/{den}", events=events,
            seconds=float(seconds), render_seed=int(crng.integers(2**63 - 1)),
        ))
    return specs


# ------------------------------------------------------------------------------------------------
# Composition: a ClipSpec becomes a pretty_midi.PrettyMIDI

_MOOD_STYLE = {
    # velocity, register shift, articulation (fraction of the slot), density (split prob, merge prob),
    # output peak in dB
    "happy": dict(velocity=96, register=4, articulation=0.55, split=0.55, merge=0.1, level_db=-1.0),
    "tense": dict(velocity=100, register=1, articulation=0.4, split=0.6, merge=0.05, level_db=-1.5),
    "sad": dict(velocity=68, register=-5, articulation=1.02, split=0.15, merge=0.45, level_db=-4.5),
    "calm": dict(velocity=58, register=-2, articulation=0.98, split=0.1, merge=0.5, level_db=-6.5),
}

# Chord progressions as scale degrees (0 = tonic), one chord per bar.
_PROGRESSIONS = {
    "rock": ((0, 4, 5, 3), (0, 3, 0, 4), (5, 3, 0, 4), (0, 6, 3, 0)),
    "swing jazz": ((1, 4, 0, 5), (0, 5, 1, 4), (2, 5, 1, 4)),
    "waltz": ((0, 0, 4, 4, 4, 4, 0, 0), (0, 3, 4, 0), (0, 4, 0, 3, 0, 4, 0, 0)),
    "bossa nova": ((0, 0, 1, 4), (1, 4, 0, 0), (0, 5, 1, 4)),
    "techno": ((0, 0, 5, 5), (0, 0, 0, 3), (0, 6, 5, 6)),
    "ballad": ((0, 5, 3, 4), (0, 4, 5, 2, 3, 0, 3, 4), (0, 3, 5, 4)),
    "march": ((0, 0, 4, 4, 4, 4, 0, 0), (0, 3, 4, 0), (0, 4, 0, 4, 3, 0, 4, 0)),
    "reggae": ((0, 3, 0, 3), (0, 4, 3, 3), (0, 5, 3, 4)),
}
_SEVENTH_GENRES = {"swing jazz", "bossa nova"}

# GM percussion keys
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 37, 38, 39, 42, 44, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)
SHAKER, COWBELL = 70, 56

# Drum patterns: one string per bar (or two bars for bossa nova), one character per grid step:
# 'X' accent, 'x' normal, 'o' ghost, '.' rest. Grid steps divide the bar evenly.
_DRUMS = {
    "rock": [
        {KICK: "x.......x.x.....", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
        {KICK: "x......xx.......", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
        {KICK: "x.......x.......", SNARE: "....X.......X..o", RIDE: "x.x.x.x.x.x.x.x."},
    ],
    "swing jazz": [  # 12 triplet steps per 4/4 bar
        {RIDE: "x..x.xx..x.x", PEDAL_HAT: "...x.....x..", KICK: "o..o..o..o.."},
        {RIDE: "x..x.xx..x.x", PEDAL_HAT: "...x.....x..", KICK: "o.....o.....", SNARE: ".....o....o."},
    ],
    "waltz": [  # 12 sixteenth steps per 3/4 bar
        {KICK: "x...........", SNARE: "....o...o...", CLOSED_HAT: "x...x...x..."},
        {KICK: "x...........", SIDE_STICK: "....x...x...", RIDE: "x...x...x..."},
    ],
    "bossa nova": [  # 32 sixteenth steps = two 4/4 bars
        {SIDE_STICK: "x..x..x...x..x....x..x...x..x...", KICK: "x..xx..xx..xx..xx..xx..xx..xx..x",
         CLOSED_HAT: "x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x."},
        {SIDE_STICK: "x..x..x...x..x....x..x...x..x...", KICK: "x..xx..xx..xx..xx..xx..xx..xx..x",
         SHAKER: "xoxoxoxoxoxoxoxoxoxoxoxoxoxoxoxo"},
    ],
    "techno": [
        {KICK: "X...X...X...X...", CLAP: "....x.......x...", OPEN_HAT: "..x...x...x...x.",
         CLOSED_HAT: "o.oo.oo.o.oo.oo."},
        {KICK: "X...X...X...X...", SNARE: "....x.......x...", OPEN_HAT: "..x...x...x...x."},
    ],
    "ballad": [
        {KICK: "x.........x.....", SNARE: "........X.......", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.......x.......", SIDE_STICK: "....x.......x...", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
    ],
    "march": [  # 16 thirty-second steps per 2/4 bar
        {KICK: "x.......x.......", SNARE: "x.o.x.o.xoxox.x.", CRASH: "o.......o......."},
        {KICK: "x.......x.......", SNARE: "x...xoxox...xoxo", CRASH: "o..............."},
    ],
    "reggae": [
        {KICK: "........X.......", SIDE_STICK: "........x.......", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
        {KICK: "........X.......", SNARE: "........x.......", CLOSED_HAT: "x.o.x.o.x.o.x.o.",
         OPEN_HAT: "..............x."},
    ],
}
_HIT_VELOCITY = {"X": 118, "x": 96, "o": 55}

_SWING = {"swing jazz": (0.6, 0.67), "reggae": (0.5, 0.56)}


@dataclass
class _Score:
    spec: ClipSpec
    rng: np.random.Generator
    beat: float
    beats_per_bar: int
    n_bars: int
    scale: tuple[int, ...]
    tonic_pc: int
    chords: list[list[int]] = field(default_factory=list)  # pitch classes relative to tonic, per bar
    swing: float = 0.5
    solo_bars: int = 0
    break_bar: int = -1
    fill_bar: int = -1

    def time(self, bar: int, beat_pos: float) -> float:
        whole = math.floor(beat_pos)
        frac = beat_pos - whole
        if self.swing != 0.5 and abs(frac - 0.5) < 1e-9:
            frac = self.swing
        elif self.swing != 0.5 and abs(frac - 0.25) < 1e-9:
            frac = self.swing / 2
        elif self.swing != 0.5 and abs(frac - 0.75) < 1e-9:
            frac = self.swing + (1 - self.swing) / 2
        return (bar * self.beats_per_bar + whole + frac) * self.beat

    def band_plays(self, bar: int) -> bool:
        return bar >= self.solo_bars and bar != self.break_bar


def _chord(scale: Sequence[int], degree: int, size: int) -> list[int]:
    """Stack thirds within the scale: semitone offsets from the tonic (may exceed an octave)."""
    return [scale[(degree + 2 * k) % 7] + 12 * ((degree + 2 * k) // 7) for k in range(size)]


def _progression(score: _Score) -> list[list[int]]:
    spec, rng = score.spec, score.rng
    options = _PROGRESSIONS[spec.genre]
    prog = options[int(rng.integers(len(options)))]
    size = 4 if spec.genre in _SEVENTH_GENRES or spec.mood == "calm" else 3
    chords = []
    for bar in range(score.n_bars):
        degree = prog[bar % len(prog)]
        chord = _chord(score.scale, degree, size)
        if spec.mood == "tense" and bar % 2 == 1 and rng.random() < 0.5:
            chord = [11, 14, 17, 20]  # diminished seventh on the leading tone
        chords.append(chord)
    return chords


def _clamp_octave(pitch: int, lo: int, hi: int) -> int:
    while pitch < lo:
        pitch += 12
    while pitch > hi:
        pitch -= 12
    return pitch


def _add(inst, velocity: float, pitch: int, start: float, end: float, limit: float) -> None:
    import pretty_midi

    if start >= limit or end <= start:
        return
    inst.notes.append(pretty_midi.Note(int(min(127, max(1, round(velocity)))), int(pitch), float(start), float(end)))


def _melody_rhythm(score: _Score, style: dict) -> list[list[tuple[float, float]]]:
    """A two-bar rhythmic motif (onset, duration in beats) by splitting/merging beats."""
    rng, bpb = score.rng, score.beats_per_bar
    split_p, merge_p = style["split"], style["merge"]
    if score.spec.tempo_bpm > 140:
        split_p *= 0.6
    elif score.spec.tempo_bpm < 80:
        split_p = min(0.8, split_p * 1.5)
    motif = []
    for _ in range(2):
        cells, beat = [], 0
        while beat < bpb:
            u = rng.random()
            if u < merge_p and beat + 2 <= bpb:
                cells.append((beat, 2.0 if rng.random() < 0.7 or beat + 3 > bpb else 3.0))
                beat += int(cells[-1][1])
            elif u < merge_p + split_p:
                if score.spec.mood == "tense" and rng.random() < 0.25:
                    cells += [(beat + q / 4, 0.25) for q in range(4)]
                elif score.spec.genre == "bossa nova" and rng.random() < 0.4:
                    cells += [(beat, 0.75), (beat + 0.75, 0.25)]
                else:
                    cells += [(beat, 0.5), (beat + 0.5, 0.5)]
                beat += 1
            elif rng.random() < 0.12 and beat > 0:
                beat += 1  # rest
            else:
                cells.append((beat, 1.0))
                beat += 1
        motif.append(cells)
    return motif


def _compose_lead(score: _Score, inst, limit: float) -> None:
    spec, rng = score.spec, score.rng
    style = _MOOD_STYLE[spec.mood]
    lo, hi = INSTRUMENT_RANGES[spec.lead_instrument]
    center = int(np.clip((lo + hi) // 2 + style["register"], lo + 5, hi - 5))
    scale_pitches = [p for p in range(lo, hi + 1) if (p - score.tonic_pc) % 12 in score.scale]
    motif = _melody_rhythm(score, style)
    pitch = min(scale_pitches, key=lambda p: abs(p - center))
    for bar in range(score.n_bars):
        if bar == score.break_bar:
            continue
        cells = motif[bar % 2]
        if bar % 4 == 3:  # phrase end: a long note (on a chord tone) and half a beat to breathe
            head = [c for c in cells if c[0] + c[1] <= 1.0 + 1e-9]
            onset = 1.0 if head else 0.0
            cells = head + [(onset, score.beats_per_bar - onset - 0.5)]
        chord_pcs = {(score.tonic_pc + c) % 12 for c in score.chords[bar]}
        for onset, dur in cells:
            strong = abs(onset - round(onset)) < 1e-9 and int(onset) % 2 == 0
            if strong:
                candidates = [p for p in range(pitch - 7, pitch + 8) if p % 12 in chord_pcs and lo <= p <= hi]
                if candidates:
                    weights = np.array([1.0 / (1 + abs(p - pitch) + 0.3 * abs(p - center) / 4) for p in candidates])
                    pitch = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
            else:
                idx = min(range(len(scale_pitches)), key=lambda k: abs(scale_pitches[k] - pitch))
                step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2]))
                if pitch > center + 7:
                    step = -abs(step)
                elif pitch < center - 7:
                    step = abs(step)
                pitch = scale_pitches[int(np.clip(idx + step, 0, len(scale_pitches) - 1))]
                if spec.mood == "tense" and rng.random() < 0.2:
                    pitch = int(np.clip(pitch + rng.choice([-1, 1]), lo, hi))
            start = score.time(bar, onset)
            end = start + max(0.06, dur * score.beat * style["articulation"])
            velocity = style["velocity"] + rng.normal(0, 5) + (8 if strong else 0)
            _add(inst, velocity, pitch, start, end, limit)


def _compose_bass(score: _Score, inst, bass_name: str, limit: float) -> None:
    spec, rng, bpb = score.spec, score.rng, score.beats_per_bar
    lo, hi = (28, 50) if bass_name != "tuba" else (29, 53)
    legato = 0.95 if spec.mood in ("sad", "calm") else 0.7
    vel = {"happy": 95, "tense": 100, "sad": 78, "calm": 70}[spec.mood]
    for bar in range(score.n_bars):
        if not score.band_plays(bar):
            continue
        chord = score.chords[bar]
        root = _clamp_octave(score.tonic_pc + chord[0] + 36, lo, hi)
        fifth = root + 7 if root + 7 <= hi else root - 5
        third = _clamp_octave(score.tonic_pc + chord[1] + 36, lo, hi)
        nxt = _clamp_octave(score.tonic_pc + score.chords[(bar + 1) % score.n_bars][0] + 36, lo, hi)
        g = spec.genre
        if g == "rock":
            notes = [(b / 2, root, 0.5) for b in range(bpb * 2)]
        elif g == "swing jazz":
            walk = [root, third, fifth, nxt + (1 if rng.random() < 0.5 else -1)]
            notes = [(b, walk[b], 1.0) for b in range(bpb)]
        elif g == "waltz":
            notes = [(0, root, 1.0)] + ([(2, fifth, 1.0)] if rng.random() < 0.3 else [])
        elif g == "bossa nova":
            notes = [(0, root, 1.5), (1.5, fifth, 0.5), (2, fifth, 1.5), (3.5, root, 0.5)]
        elif g == "techno":
            notes = [(b + 0.5, root + (12 if b % 2 else 0), 0.5) for b in range(bpb)]
        elif g == "ballad":
            notes = [(0, root, 2.0), (2, root if rng.random() < 0.5 else fifth, 2.0)]
        elif g == "march":
            notes = [(0, root, 1.0), (1, fifth, 1.0)]
        else:  # reggae: the bass leaves the downbeat empty
            notes = [(0.5, root, 0.5), (1.0, root, 0.75), (2.0, third, 0.5), (2.5, fifth, 0.5), (3.5, root, 0.5)]
        for onset, pitch, dur in notes:
            start = score.time(bar, onset)
            _add(inst, vel + rng.normal(0, 4) + (6 if onset == 0 else 0), pitch, start,
                 start + dur * score.beat * legato, limit)


def _voicing(score: _Score, chord: Sequence[int], lo: int) -> list[int]:
    return sorted(_clamp_octave(score.tonic_pc + c + lo - lo % 12, lo, lo + 11) for c in chord)


def _compose_chords(score: _Score, inst, name: str, limit: float) -> None:
    spec, rng, bpb = score.spec, score.rng, score.beats_per_bar
    vel = {"happy": 78, "tense": 82, "sad": 62, "calm": 55}[spec.mood]
    low = 52 if spec.mood in ("happy", "tense") else 48
    staccato = spec.mood in ("happy", "tense")
    g = spec.genre
    for bar in range(score.n_bars):
        if not score.band_plays(bar):
            continue
        voicing = _voicing(score, score.chords[bar], low)
        hits: list[tuple[float, float, list[int]]]
        if g == "rock":
            if name == "distortion guitar":  # power chords in eighths
                root = _clamp_octave(score.tonic_pc + score.chords[bar][0], 40, 51)
                hits = [(b / 2, 0.45, [root, root + 7, root + 12]) for b in range(bpb * 2)]
            else:
                hits = [(0, 1.5, voicing), (1.5, 0.5, voicing), (2, 1.5, voicing), (3.5, 0.5, voicing)]
        elif g == "swing jazz":
            shell = [voicing[1], voicing[-1]] if len(voicing) >= 4 else voicing
            hits = [(0, 0.6, shell), (1.5, 0.4, shell)] if rng.random() < 0.6 else [(1, 0.5, shell), (2.5, 0.5, shell)]
        elif g == "waltz":
            hits = [(1, 0.45, voicing), (2, 0.45, voicing)]
        elif g == "bossa nova":
            hits = [(onset, 0.4 if onset < 2 else 0.5, voicing) for onset in (0, 0.75, 1.5, 2.5, 3.25)]
        elif g == "techno":
            hits = [(b + 0.5, 0.25, voicing) for b in range(bpb)] if name == "saw synth" else [(0, bpb * 0.98, voicing)]
        elif g == "ballad":
            arp = voicing + [voicing[0] + 12]
            hits = [(k / 2, 0.9, [arp[k % len(arp)]]) for k in range(bpb * 2)]
        elif g == "march":
            hits = [(0.5, 0.35, voicing), (1.5, 0.35, voicing)]
        else:  # reggae skank on the off-beats ("and"s of the quarter pulse)
            hits = [(b + 0.5, 0.25, voicing) for b in range(bpb)]
        for onset, dur, pitches in hits:
            length = dur * (0.8 if staccato and dur > 0.3 else 1.0)
            start = score.time(bar, onset)
            for p in pitches:
                _add(inst, vel + rng.normal(0, 4), p, start, start + length * score.beat, limit)


def _compose_pad(score: _Score, inst, name: str, limit: float) -> None:
    spec, rng = score.spec, score.rng
    vel = {"happy": 60, "tense": 66, "sad": 55, "calm": 50}[spec.mood]
    for bar in range(score.n_bars):
        if not score.band_plays(bar):
            continue
        voicing = _voicing(score, score.chords[bar], 60)
        start = score.time(bar, 0)
        if name == "glockenspiel":
            for k, p in enumerate(voicing[:3]):
                _add(inst, vel + 10, p + 12, start + k * score.beat / 2, start + (k + 1) * score.beat / 2, limit)
        else:
            for p in voicing:
                _add(inst, vel + rng.normal(0, 3), p, start, start + score.beats_per_bar * score.beat * 0.98, limit)


def _compose_drums(score: _Score, inst, limit: float) -> None:
    spec, rng, bpb = score.spec, score.rng, score.beats_per_bar
    variants = _DRUMS[spec.genre]
    pattern = variants[int(rng.integers(len(variants)))]
    level = {"happy": 1.0, "tense": 1.0, "sad": 0.8, "calm": 0.7}[spec.mood]
    bars_per_pattern = 2 if spec.genre == "bossa nova" else 1
    for bar in range(score.n_bars):
        if bar < score.solo_bars:
            continue
        for note, row in pattern.items():
            steps = len(row) // bars_per_pattern
            offset = (bar % bars_per_pattern) * steps
            for s in range(steps):
                char = row[offset + s]
                if char == ".":
                    continue
                beat_pos = s * bpb / steps
                if bar == score.fill_bar and beat_pos >= bpb - 1:
                    continue
                start = score.time(bar, beat_pos) + rng.normal(0, 0.003)
                _add(inst, _HIT_VELOCITY[char] * level + rng.normal(0, 5), note, max(0.0, start), start + 0.2, limit)
        if bar == score.fill_bar:  # tom fill over the last beat, crash on the next downbeat
            n_hits = 4 if spec.tempo_bpm < 150 else 2
            for k in range(n_hits):
                start = score.time(bar, bpb - 1 + k / n_hits)
                _add(inst, 100 * level, TOMS[min(k * 6 // n_hits, 5)], start, start + 0.2, limit)
        if (score.fill_bar >= 0 and bar == score.fill_bar + 1) or (score.solo_bars > 0 and bar == score.solo_bars) \
                or (score.break_bar >= 0 and bar == score.break_bar + 1):
            start = score.time(bar, 0)
            _add(inst, 105 * level, CRASH, start, start + 1.0, limit)


def compose(spec: ClipSpec):
    """The clip as a pretty_midi.PrettyMIDI (lead, chords, bass, optional layer and GM drums)."""
    import pretty_midi

    rng = np.random.Generator(np.random.PCG64(spec.render_seed))
    num, den = (int(x) for x in spec.time_signature.split("/"))
    beat = 60.0 / spec.tempo_bpm
    n_bars = int(math.ceil(spec.seconds / (num * beat))) + 1
    score = _Score(spec=spec, rng=rng, beat=beat, beats_per_bar=num, n_bars=n_bars, scale=MODES[spec.mode],
                   tonic_pc=TONICS.index(spec.tonic))
    if spec.genre in _SWING:
        score.swing = float(rng.uniform(*_SWING[spec.genre]))
    full_bars = int(spec.seconds // (num * beat))
    if "solo" in spec.events:
        score.solo_bars = 2 if full_bars >= 6 else 1
    if "break" in spec.events:  # planned only with >= 4 full bars: not the first or the last bar
        choices = list(range(max(1, score.solo_bars + 1), full_bars - 1)) or [full_bars - 2]
        score.break_bar = choices[int(rng.integers(len(choices)))]
    if "drum fill" in spec.events:  # planned only with >= 2 full bars: the next downbeat is in the clip
        choices = [b for b in range(score.solo_bars, full_bars - 1) if b != score.break_bar] or [full_bars - 2]
        score.fill_bar = choices[int(rng.integers(len(choices)))]
    score.chords = _progression(score)

    pm = pretty_midi.PrettyMIDI(initial_tempo=spec.tempo_bpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    key_name = f"{spec.tonic} {'Major' if spec.key.endswith('major') else 'minor'}"
    pm.key_signature_changes.append(pretty_midi.KeySignature(pretty_midi.key_name_to_key_number(key_name), 0.0))
    limit = spec.seconds

    gains = {}

    def instrument(program: int, name: str, role: str, is_drum: bool = False):
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum, name=name)
        gains[name] = _MIX_TARGETS[role] / _program_loudness(program, is_drum)
        pm.instruments.append(inst)
        return inst

    lead = instrument(INSTRUMENT_PROGRAMS[spec.lead_instrument], spec.lead_instrument, "lead")
    _compose_lead(score, lead, limit)
    bass_name, chord_name, *extra = spec.accompaniment
    _compose_bass(score, instrument(ACCOMPANIMENT_PROGRAMS[bass_name], bass_name, "bass"), bass_name, limit)
    chord_role = "pad" if chord_name == "synth pad" else "chords"  # sustained chords sound louder
    _compose_chords(score, instrument(ACCOMPANIMENT_PROGRAMS[chord_name], chord_name, chord_role), chord_name, limit)
    for name in extra:
        _compose_pad(score, instrument(ACCOMPANIMENT_PROGRAMS[name], name, "extra"), name, limit)
    _compose_drums(score, instrument(0, "drums", "drums", is_drum=True), limit)
    # Mix: channel volume (CC7) balancing the SoundFont's very different preset loudness. The
    # synthesizer's amplitude goes with the cube of CC7, hence the cube root.
    loudest = max(gains.values())
    for inst in pm.instruments:
        volume = int(round(127 * (gains[inst.name] / loudest) ** (1 / 3)))
        inst.control_changes.append(pretty_midi.ControlChange(7, max(1, min(127, volume)), 0.0))
    return pm


# ------------------------------------------------------------------------------------------------
# Rendering

_SOUNDFONT_BYTES: bytes | None = None
# Relative RMS of each part in the mix (the lead on top, then drums, bass, chords, extra layer).
_MIX_TARGETS = {"lead": 1.0, "drums": 0.7, "bass": 0.7, "chords": 0.45, "pad": 0.25, "extra": 0.2}
_LOUDNESS: dict[tuple[int, bool], float] = {}


def _soundfont_bytes() -> bytes:
    global _SOUNDFONT_BYTES
    if _SOUNDFONT_BYTES is None:
        _SOUNDFONT_BYTES = soundfont_path().read_bytes()
    return _SOUNDFONT_BYTES


def _program_loudness(program: int, is_drum: bool = False) -> float:
    """RMS of a fixed test phrase (velocity 90, full channel volume) played by a preset."""
    key = (program, is_drum)
    if key not in _LOUDNESS:
        import tinysoundfont

        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE, gain=-8.0)
        sfid = synth.sfload(_soundfont_bytes())
        ch = 9 if is_drum else 0
        synth.program_select(ch, sfid, 128 if is_drum else 0, 0 if is_drum else program, is_drum)
        low = 36 if program in (32, 33, 34, 38, 39, 58) else 60
        notes = (KICK, SNARE, CLOSED_HAT, SNARE) if is_drum else (low, low + 4, low + 7, low + 12)
        parts = []
        for note in notes:
            synth.noteon(ch, note, 90)
            parts.append(np.frombuffer(synth.generate_simple(SAMPLE_RATE // 3), dtype=np.float32).copy())
            synth.noteoff(ch, note)
        parts.append(np.frombuffer(synth.generate_simple(SAMPLE_RATE // 4), dtype=np.float32).copy())
        audio = np.concatenate(parts)
        _LOUDNESS[key] = max(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), 1e-6)
    return _LOUDNESS[key]


def render_midi(pm, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play a PrettyMIDI with tinysoundfont and TimGM6mb.sf2: mono float32 of seconds*rate samples.

    A fresh synthesizer per call keeps the output independent of what was rendered before.
    """
    import tinysoundfont

    n = int(round(seconds * sample_rate))
    synth = tinysoundfont.Synth(samplerate=sample_rate, gain=-8.0)
    sfid = synth.sfload(_soundfont_bytes())
    events = []  # (sample, order, channel, kind, a, b); note-offs before note-ons at equal times
    channel = 0
    for inst in pm.instruments:
        if inst.is_drum:
            ch = 9
            synth.program_select(ch, sfid, 128, 0, True)
        else:
            ch = channel if channel != 9 else channel + 1
            channel = ch + 1
            synth.program_select(ch, sfid, 0, inst.program)
        for cc in inst.control_changes:
            events.append((int(round(cc.time * sample_rate)), 0, ch, 2, cc.number, cc.value))
        for note in inst.notes:
            events.append((int(round(note.start * sample_rate)), 2, ch, 1, note.pitch, note.velocity))
            events.append((int(round(note.end * sample_rate)), 1, ch, 0, note.pitch, 0))
    events.sort()
    buffer = bytearray(n * 8)
    view = memoryview(buffer)
    pos = 0
    for sample, _, ch, kind, a, b in events:
        sample = min(sample, n)
        if sample > pos:
            synth.generate_simple(sample - pos, buffer=view[pos * 8:sample * 8])
            pos = sample
        if pos >= n:
            break
        if kind == 1:
            synth.noteon(ch, a, b)
        elif kind == 0:
            synth.noteoff(ch, a)
        else:
            synth.control_change(ch, a, b)
    if pos < n:
        synth.generate_simple(n - pos, buffer=view[pos * 8:n * 8])
    stereo = np.frombuffer(buffer, dtype=np.float32).reshape(n, 2)
    return stereo.mean(axis=1).astype(np.float32)


def _reverb(audio: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    from scipy.signal import fftconvolve

    rt60 = float(rng.uniform(0.3, 1.5))
    wet = float(rng.uniform(0.04, 0.25))
    length = int(min(rt60, 1.2) * sample_rate)
    t = np.arange(length) / sample_rate
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    ir[: int(0.01 * sample_rate)] *= np.linspace(0, 1, int(0.01 * sample_rate))  # soft onset
    ir /= np.sqrt(np.sum(ir ** 2))
    tail = fftconvolve(audio.astype(np.float64), ir)[: len(audio)]
    return audio + wet * tail


def render_clip(spec: ClipSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio of a clip: composed, rendered, with room reverb, dynamics events and peak level."""
    pm = compose(spec)
    audio = render_midi(pm, spec.seconds, sample_rate).astype(np.float64)
    post = np.random.Generator(np.random.PCG64([spec.render_seed, 1]))
    audio = _reverb(audio, post, sample_rate)
    n = len(audio)
    t = np.arange(n) / max(n - 1, 1)
    if "crescendo" in spec.events:
        audio *= 0.25 + 0.75 * t ** 1.5
    if "fade-out" in spec.events:
        start = float(post.uniform(0.5, 0.7))
        ramp = np.clip((t - start) / (1 - start), 0.0, 1.0)
        audio *= (1.0 - ramp) ** 2
    peak = float(np.max(np.abs(audio)))
    if not np.isfinite(peak) or peak < 1e-6:
        raise RuntimeError(f"rendered clip {spec.file_name} is silent or not finite")
    level_db = _MOOD_STYLE[spec.mood]["level_db"] - float(post.uniform(0.0, 1.0))
    audio *= 10 ** (level_db / 20) / peak
    return audio.astype(np.float32)


def _wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    import soundfile as sf

    pcm = np.clip(np.round(audio.astype(np.float64) * 32767.0), -32767, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _render_to_file(job: tuple[dict, str]) -> tuple[str, str, str, int]:
    """Render one clip to its path (temp file + rename); return (path, spec hash, sha256, bytes)."""
    spec_dict, path = job
    spec = ClipSpec(**{**spec_dict, "accompaniment": tuple(spec_dict["accompaniment"]),
                       "events": tuple(spec_dict["events"])})
    data = _wav_bytes(render_clip(spec))
    _atomic_write(Path(path), data)
    return path, spec.spec_hash(), hashlib.sha256(data).hexdigest(), len(data)


def _render_chunk(jobs: list[tuple[dict, str]]) -> list[tuple[str, str, str, int]]:
    return [_render_to_file(job) for job in jobs]


# ------------------------------------------------------------------------------------------------
# Text and CSVs


def clip_text(spec: ClipSpec, seed: int, noise: MetadataNoise) -> dict:
    """Captions, CS tags, OS keywords and FS description of a clip (deterministic per clip)."""
    rng = _rng(seed, spec.split, 2, spec.index)
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
    metadata = [[s.file_name, ";".join(t["os"]), 1_000_000 * (_SPLIT_CODE[split] + 1) + s.index,
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
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return int(value)


def _check_choice(name: str, values, vocabulary: Sequence[str]) -> tuple[str, ...]:
    if values is None:
        return tuple(vocabulary)
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{name} must name at least one of {list(vocabulary)}")
    for v in values:
        if v not in vocabulary:
            singular = name[:-1] if name.endswith("s") else name
            raise ValueError(f"unknown {singular} value {v!r}; choose from {list(vocabulary)}")
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise ValueError(f"{name} lists {dup!r} more than once")
    return tuple(v for v in vocabulary if v in values)  # canonical order


def _min_seconds(genres: Sequence[str], tempo_bins: Sequence[str]) -> float:
    """Length of one bar at the slowest tempo any chosen genre can have."""
    longest = 0.0
    for g in genres:
        lows = [r[0] for b in tempo_bins if (r := _bin_range(g, b)) is not None]
        if lows:
            longest = max(longest, TIME_SIGNATURES[g][0] * 60.0 / min(lows))
    return longest


def validate_parameters(seed, n_train, n_val, n_eval, seconds, workers, genres, moods, lead_instruments,
                        tempo_bins, noise) -> dict:
    """Check every parameter (raising one ValueError naming the bad value) and return them normalised."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = {"development": _check_count("n_train", n_train), "validation": _check_count("n_val", n_val),
             "evaluation": _check_count("n_eval", n_eval)}
    if sum(sizes.values()) == 0:
        raise ValueError("n_train + n_val + n_eval is 0: nothing to generate")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    genres = _check_choice("genres", genres, GENRES)
    moods = _check_choice("moods", moods, MOODS)
    lead_instruments = _check_choice("lead_instruments", lead_instruments, INSTRUMENTS)
    tempo_bins = _check_choice("tempo_bins", tempo_bins, TEMPO_BINS)
    for g in genres:
        if not any(_bin_range(g, b) for b in tempo_bins):
            raise ValueError(f"genre {g!r} (tempo {GENRE_TEMPO_RANGES[g]} BPM) cannot be played in tempo bins "
                             f"{list(tempo_bins)}")
    for b in tempo_bins:
        if not any(_bin_range(g, b) for g in genres):
            raise ValueError(f"tempo bin {b!r} {TEMPO_BIN_EDGES[b]} is not reachable by genres {list(genres)}")
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a number, got {seconds!r}") from None
    minimum = _min_seconds(genres, tempo_bins)
    if not math.isfinite(seconds) or seconds < minimum:
        raise ValueError(f"seconds={seconds!r} is too short: one bar at the slowest tempo needs {minimum:.2f} s")
    if seconds > MAX_SECONDS:
        raise ValueError(f"seconds={seconds!r} is longer than the supported {MAX_SECONDS:.0f} s")
    if noise is not None and not isinstance(noise, MetadataNoise):
        raise ValueError(f"noise must be a MetadataNoise, got {type(noise).__name__}")
    return dict(seed=int(seed), sizes=sizes, seconds=seconds, genres=list(genres), moods=list(moods),
                lead_instruments=list(lead_instruments), tempo_bins=list(tempo_bins),
                noise=(noise or MetadataNoise()).to_dict())


def _environment() -> dict:
    from importlib.metadata import version

    return {"soundfont_sha256": hashlib.sha256(_soundfont_bytes()).hexdigest(), "sample_rate": SAMPLE_RATE,
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
_OWN_TMP = re.compile(r"^\..+\.\d+\.tmp$")


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
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    params["environment"] = _environment()
    if _manifest_matches(out_dir, params):
        log.info("SynthMusic in %s is complete and matches the parameters; nothing to do", out_dir)
        return SynthMusicReport(out_dir, True, 0, 0, time.perf_counter() - t0)
    if out_dir.is_dir() and not (out_dir / MARKER_NAME).exists() and not (out_dir / MANIFEST_NAME).exists() \
            and any(out_dir.glob("clotho_*")):
        raise ValueError(f"{out_dir} holds a Clotho-style dataset that SynthMusic did not write; "
                         "refusing to overwrite it")

    # Plan everything in memory first (factors and text are cheap).
    plans = {split: plan_split(params["seed"], split, n, params["seconds"], params["genres"], params["moods"],
                               params["lead_instruments"], params["tempo_bins"])
             for split, n in params["sizes"].items()}
    texts = {split: [clip_text(s, params["seed"], noise) for s in specs] for split, specs in plans.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
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
    # Record the verified clips so an interruption from here on keeps them.
    journal = progress_dir / "done.jsonl"
    _atomic_write(journal, "".join(json.dumps({"path": r, **i}) + "\n" for r, i in done.items()).encode())
    for stale in progress_dir.iterdir():
        if stale != journal:
            stale.unlink(missing_ok=True)

    if todo:
        _render_all(out_dir, todo, workers, progress, journal, done)

    files: dict[str, dict] = {}
    for split, specs in plans.items():
        for name, data in _split_csvs(split, specs, texts[split]).items():
            _atomic_write(out_dir / name, data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    files.update({rel: done[rel] for rel in sorted(wanted)})
    manifest = {"name": "SynthMusic", "version": VERSION, "params": params, "cs_vocabulary": list(CS_VOCABULARY),
                "files": files}
    _atomic_write(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
    for path in progress_dir.glob("*"):
        path.unlink(missing_ok=True)
    progress_dir.rmdir()
    elapsed = time.perf_counter() - t0
    log.info("SynthMusic: rendered %d clips, reused %d, in %.1f s -> %s", len(todo), reused, elapsed, out_dir)
    return SynthMusicReport(out_dir, False, len(todo), reused, elapsed)


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
                    record(_render_chunk([job]))
            else:
                size = max(1, min(8, len(todo) // (workers * 4)))
                chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
                # fork where available: works from scripts without a __main__ guard and from notebooks;
                # the workers only run numpy, scipy and tinysoundfont (no threads of the parent).
                methods = multiprocessing.get_all_start_methods()
                ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
                with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    futures = [pool.submit(_render_chunk, c) for c in chunks]
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
