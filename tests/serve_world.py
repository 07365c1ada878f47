"""A small catalogue served by `hybrid-retrieval serve` in the tests (test_serve.py, test_serve_browser.py).

Twelve 3-s clips of known content (tones, noise, chirps; some in a sub-folder, names with spaces,
'#' and '%' so that ids must be percent-encoded), a metadata CSV naming all but one of them, a
late-fusion checkpoint (heads at random, a fixed weight of 0.7: above 0.5, where the audio part
cannot be recovered from the fused embedding and the metadata alone), its index, and a
disentangled similarity model on log-mels (heads at random: the API's answers are checked
against the model's own brute force, not against what it learned).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 32_000
WEIGHT = 0.7
# (id, kind, keywords, description); kind: a frequency in Hz, "noise", or "chirp"
CLIPS = [
    ("low hum.wav", "110", "hum;drone;low", "A low electric hum."),
    ("whistle.wav", "2000", "whistle;high", "Someone whistles a high note."),
    ("beep 600.wav", "600", "beep;alarm", "A steady beep at mid pitch."),
    ("hiss.wav", "noise", "noise;hiss;static", "White noise hisses like static."),
    ("sweep up.wav", "chirp", "sweep;siren", "A rising sweep, as a siren starts."),
    ("bass 55.wav", "55", "bass;rumble", "A deep bass rumble."),
    ("sub dir/tone 440.wav", "440", "tone;a4;tuning", "A tuning fork at A 440."),
    ("sub dir/tone 880.wav", "880", "tone;octave", "A tone one octave above A 440."),
    ("sub dir/noise #2.wav", "noise", "rain;noise", "Rain-like noise on a roof."),
    ("sub dir/100% sine.wav", "1000", "sine;test tone", "A pure 1 kHz test tone."),
    ("chirp fast.wav", "chirp", "chirp;bird", "A fast chirp like a bird."),
    ("no metadata.wav", "300", None, None),  # not in the CSV: its items are embedded from audio alone
]


def clip(kind: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if kind == "noise":
        return (0.3 * rng.standard_normal(len(t))).astype(np.float32)
    if kind == "chirp":
        return (0.3 * np.sin(2 * np.pi * (200 * t + 450 * t ** 2))).astype(np.float32)
    return (0.3 * np.sin(2 * np.pi * float(kind) * t)).astype(np.float32)


@dataclass
class ServeWorld:
    root: Path
    clips: Path  # the catalogue folder
    metadata: Path  # its metadata CSV
    checkpoint: Path  # the late-fusion checkpoint
    index: Path
    similar: Path  # the similarity model directory
    example: Path  # an altered copy of "no metadata.wav" (44.1 kHz, quieter, a little noise), outside the catalogue
    cache: Path  # HYBRID_RETRIEVAL_CACHE of the servers


def make_serve_world(root: Path, weights_dir: Path) -> ServeWorld:
    from hybrid_retrieval.cli import main
    from hybrid_retrieval.disentangled.checkpoint import save_model
    from hybrid_retrieval.disentangled.features import create_source
    from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

    rng = np.random.default_rng(0)
    clips = root / "clips"
    for name, kind, _, _ in CLIPS:
        (clips / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(clips / name, clip(kind, 3.0, SR, rng), SR)
    example = root / "example.wav"
    sf.write(example, 0.7 * clip("300", 3.0, 44_100, rng) + 0.003 * rng.standard_normal(3 * 44_100).astype(np.float32),
             44_100)
    metadata = root / "metadata.csv"
    with open(metadata, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "keywords", "description"])
        writer.writerows([Path(name).name, keywords, description] for name, _, keywords, description in CLIPS if keywords)
    cache = root / "cache"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("mn04_minilm", audio_weights=str(weights_dir / "mn04_as_mAP_432.pt"), embed_dim=64,
                             fusion="late", metadata="os+fs",
                             fusion_options={"late": {"weight": WEIGHT, "learn_weight": False}}).eval()
        checkpoint = save_checkpoint(root / "late", model, {"audio_pretrained": True}, TrainingState(1, 1),
                                     frozen=("audio", "text"))
        source = create_source("melcnn")
        csn = ConditionalSimilarityNet(CSNConfig(encoder="melcnn", embed_dim=32, hidden=16), source.dim).eval()
        similar = save_model(root / "similar", csn, source, {"encoder": "melcnn"})
    index = root / "clips.index"
    status = main(["index", "build", str(clips), "--checkpoint", str(checkpoint), "--out", str(index),
                   "--metadata", str(metadata), "--workers", "0"])
    assert status == 0
    return ServeWorld(root, clips, metadata, checkpoint, index, similar, example, cache)
