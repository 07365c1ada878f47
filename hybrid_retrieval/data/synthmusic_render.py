"""SynthMusic's music: a :class:`ClipSpec` is composed as MIDI (``pretty_midi``) and rendered
with real sampled instruments, the General MIDI SoundFont ``TimGM6mb.sf2`` that ships in the
``pretty_midi`` package, played by ``tinysoundfont`` (no fluidsynth, no system packages).

Each genre has its own GM drum pattern (channel 10), bass line, harmony and rhythm idiom; each mood
its mode, register, dynamics, articulation and melodic density. The parts are balanced by channel
volume against the SoundFont's measured preset loudness, then the mix gets room reverb, the clip's
dynamics events (crescendo, fade-out) and its output level. The audio is a pure function of the
spec: same spec, same samples (on the same platform and library versions).
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.data.synthmusic_factors import (
    ACCOMPANIMENT_PROGRAMS,
    INSTRUMENT_PROGRAMS,
    INSTRUMENT_RANGES,
    MODES,
    TONICS,
    ClipSpec,
)
from hybrid_retrieval.errors import NotFoundError
from hybrid_retrieval.hub import write_atomic


def soundfont_path() -> Path:
    """The General MIDI SoundFont shipped inside the pretty_midi package."""
    import pretty_midi

    path = Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise NotFoundError(f"TimGM6mb.sf2 not found in the pretty_midi package at {path}")
    return path


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


def compose_clip(spec: ClipSpec):
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

# Relative RMS of each part in the mix (the lead on top, then drums, bass, chords, extra layer).
_MIX_TARGETS = {"lead": 1.0, "drums": 0.7, "bass": 0.7, "chords": 0.45, "pad": 0.25, "extra": 0.2}


@functools.cache
def soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


@functools.cache
def _program_loudness(program: int, is_drum: bool = False) -> float:
    """RMS of a fixed test phrase (velocity 90, full channel volume) played by a preset."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE, gain=-8.0)
    sfid = synth.sfload(soundfont_bytes())
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
    return max(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), 1e-6)


def render_midi(pm, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play a PrettyMIDI with tinysoundfont and TimGM6mb.sf2: mono float32 of seconds*rate samples.

    A fresh synthesizer per call keeps the output independent of what was rendered before.
    """
    import tinysoundfont

    n = int(round(seconds * sample_rate))
    synth = tinysoundfont.Synth(samplerate=sample_rate, gain=-8.0)
    sfid = synth.sfload(soundfont_bytes())
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
    pm = compose_clip(spec)
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


def render_to_file(job: tuple[dict, str]) -> tuple[str, str, str, int]:
    """Render one clip to its path (temp file + rename); return (path, spec hash, sha256, bytes)."""
    spec_dict, path = job
    spec = ClipSpec(**{**spec_dict, "accompaniment": tuple(spec_dict["accompaniment"]),
                       "events": tuple(spec_dict["events"])})
    data = _wav_bytes(render_clip(spec))
    write_atomic(Path(path), data)
    return path, spec.spec_hash(), hashlib.sha256(data).hexdigest(), len(data)


def render_chunk(jobs: list[tuple[dict, str]]) -> list[tuple[str, str, str, int]]:
    """Render a list of jobs (one task of the process pool)."""
    return [render_to_file(job) for job in jobs]
