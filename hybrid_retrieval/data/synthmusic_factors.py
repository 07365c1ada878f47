"""SynthMusic's factors: the vocabularies, the :class:`ClipSpec` that decides one clip, and the
planning of a split (which clip gets which genre, mood, lead instrument, tempo, key and events).

Categorical factors are assigned per split by shuffled cycling (every value appears in every split
with at least as many clips as values; counts differ by at most one); tempo bins are matched to
genres with feasible tempo ranges so that they are balanced too. Everything else of a clip comes
from a generator seeded by ``(seed, split, index)``, so planning is deterministic and cheap.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from hybrid_retrieval.errors import BadInputError

VERSION = 1  # of the generator: part of every clip's spec hash and of the manifest
SPLITS = ("development", "validation", "evaluation")
SPLIT_CODE = {"development": 0, "validation": 1, "evaluation": 2}
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

def tempo_bin(bpm: float) -> str:
    """The tempo bin of a BPM value (bins are half-open, the last one includes its upper edge)."""
    for name in TEMPO_BINS:
        lo, hi = TEMPO_BIN_EDGES[name]
        if lo <= bpm < hi:
            return name
    if bpm == TEMPO_BIN_EDGES[TEMPO_BINS[-1]][1]:
        return TEMPO_BINS[-1]
    raise BadInputError(f"tempo {bpm} BPM is outside {TEMPO_RANGE}")


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
    return np.random.SeedSequence([0x5EED_AD10, seed, SPLIT_CODE[split], stream, index])


def split_rng(seed: int, split: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(_seed_sequence(seed, split, stream, index)))


def _balanced(values: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """Shuffled cycling: blocks of random permutations, cut to n, then shuffled over the clips."""
    out: list[str] = []
    while len(out) < n:
        out.extend(values[i] for i in rng.permutation(len(values)))
    out = out[:n]
    return [out[i] for i in rng.permutation(n)]


def genre_bin_range(genre: str, bin_name: str) -> tuple[float, float] | None:
    """The BPM range a genre can play within a tempo bin, or None when it is under 1 BPM wide."""
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
    feasible = [[b for b in bins if genre_bin_range(g, b) is not None] for g in genres]
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
    rng = split_rng(seed, split, 0)
    genre_list = _balanced(list(genres), n, rng)
    mood_list = _balanced(list(moods), n, rng)
    lead_list = _balanced(list(instruments), n, rng)
    bin_list = _match_tempo_bins(genre_list, tempo_bins, rng)
    specs = []
    for i in range(n):
        crng = split_rng(seed, split, 1, i)
        genre, mood, lead, bin_name = genre_list[i], mood_list[i], lead_list[i], bin_list[i]
        lo, hi = genre_bin_range(genre, bin_name)  # type: ignore[misc]
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
