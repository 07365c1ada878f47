"""Disentangled music similarity: masks, losses, the overlap and tempo rules, training, `similar`."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval.cli import main
from hybrid_retrieval.disentangled.conditions import TempoTolerance, estimate_tempo, tempo_relations
from hybrid_retrieval.disentangled.features import min_shift, sample_segment_pair, tile_starts
from hybrid_retrieval.disentangled.losses import (
    ConditionTriplet,
    TempoTripletMiner,
    TrackRegularization,
    TripletBatch,
    build_loss,
)
from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig, fixed_masks
from hybrid_retrieval.disentangled.training import sample_segments

CONDITIONS = ["genre", "mood", "instrument", "tempo"]


# ------------------------------------------------------------------------------------------------
# Masks and gradients


@pytest.mark.parametrize("n, dim", [(4, 256), (3, 12), (1, 8)])
def test_fixed_masks_are_disjoint_and_cover(n: int, dim: int) -> None:
    masks = fixed_masks(n, dim)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks.sum(0), torch.ones(dim))  # each dimension belongs to exactly one condition
    assert torch.equal(masks.sum(1), torch.full((n,), float(dim // n)))


def test_mask_kinds_and_invalid_configs() -> None:
    assert torch.equal(ConditionalSimilarityNet(CSNConfig(masks="none"), 8).masks(), torch.ones(4, 256))
    learned = ConditionalSimilarityNet(CSNConfig(masks="learned"), 8)
    assert learned.masks().min() >= 0 and learned.mask_weights.requires_grad
    separate = ConditionalSimilarityNet(CSNConfig(heads="separate"), 8)
    assert len(separate.heads) == 4 and separate(torch.randn(2, 9, 8)).shape == (2, 256)
    for bad in ({"embed_dim": 250}, {"heads": "separate", "masks": "none"}, {"conditions": ["genre", "genre"]},
                {"masks": "soft"}):
        with pytest.raises(ValueError):
            CSNConfig(**bad)


def _batch(rows: int = 24, dim: int = 256) -> TripletBatch:
    gen = torch.Generator().manual_seed(0)
    labels = {"genre": torch.randint(3, (rows,), generator=gen), "mood": torch.randint(2, (rows,), generator=gen),
              "instrument": torch.randint(4, (rows,), generator=gen),
              "tempo": torch.tensor([80.0, 81.0, 82.0, 120.0, 121.0, 160.0] * (rows // 6), dtype=torch.float64)}
    return TripletBatch(torch.randn(rows, dim, generator=gen, requires_grad=True), torch.arange(rows), labels, rows)


@pytest.mark.parametrize("index, condition", list(enumerate(CONDITIONS)))
def test_condition_loss_gradient_stays_in_its_subspace(index: int, condition: str) -> None:
    batch, masks = _batch(), fixed_masks(4, 256)
    loss = ConditionTriplet(condition, index, margin=0.5, tolerance=TempoTolerance())(batch, masks)
    loss.backward()
    grad = batch.embeddings.grad
    inside = masks[index].bool()
    assert loss > 0 and grad[:, inside].abs().sum() > 0
    assert torch.count_nonzero(grad[:, ~inside]) == 0


def test_loss_terms_and_weights() -> None:
    loss = build_loss(CONDITIONS, {"tempo": 2.0, "mood": 0.0}, track_weight=0.0)
    assert loss.weights == {"genre": 1.0, "instrument": 1.0, "tempo": 2.0}  # weight 0: left out
    total, parts = loss(_batch(), fixed_masks(4, 256))
    assert set(parts) == {"genre", "instrument", "tempo"}
    assert total.item() == pytest.approx(parts["genre"] + parts["instrument"] + 2 * parts["tempo"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown condition"):
        build_loss(CONDITIONS, {"key": 1.0}, 1.0)


# ------------------------------------------------------------------------------------------------
# Track regularization: segment pairs overlap by at most 50 %, negatives come from other tracks


def overlap_fraction(start_a: int, start_b: int, length: int) -> float:
    """Fraction of a segment shared by two `length`-frame segments starting at these frames."""
    return max(0, length - abs(start_a - start_b)) / length


def test_min_shift_and_overlap() -> None:
    assert min_shift(9, 0.5) == 5 and overlap_fraction(0, 5, 9) == 4 / 9  # 4.5 frames: at most 4
    assert min_shift(10, 0.5) == 5 and overlap_fraction(0, 5, 10) == 0.5  # exactly 50 % is allowed
    assert min_shift(10, 0.0) == 10 and overlap_fraction(3, 13, 10) == 0.0
    with pytest.raises(ValueError):
        min_shift(10, 1.0)


@pytest.mark.parametrize("n_frames, length", [(32, 9), (19, 9), (20, 10), (14, 9), (30, 10)])
def test_segment_pairs_overlap_at_most_half(n_frames: int, length: int) -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6000):
        a, b = sample_segment_pair(n_frames, length, 0.5, rng)
        assert 0 <= a <= n_frames - length and 0 <= b <= n_frames - length
        assert overlap_fraction(a, b, length) <= 0.5
        seen.add((a, b))
    valid = {(a, b) for a in range(n_frames - length + 1) for b in range(n_frames - length + 1)
             if overlap_fraction(a, b, length) <= 0.5}
    assert seen == valid  # every allowed pair can be drawn


def test_too_short_tracks_get_no_pair() -> None:
    assert sample_segment_pair(13, 9, 0.5, np.random.default_rng(0)) is None  # needs 9 + 5 frames
    assert tile_starts(32, 9) == [0, 9, 18, 23] and tile_starts(5, 9) == [0]


def test_track_batches_pair_segments_of_one_track_and_negatives_of_others() -> None:
    # frame t of track k holds the value 100 k + t, so a segment tells its track and start
    lengths = [32, 19, 13, 32]  # the 13-frame track is too short for a pair
    sequences = [(100 * k + torch.arange(n, dtype=torch.float32))[:, None].repeat(1, 3) for k, n in enumerate(lengths)]
    rng = np.random.default_rng(1)
    for _ in range(50):
        segments, tracks = sample_segments(sequences, np.array([3, 1, 2, 0]), 9, 0.5, True, rng)
        assert len(segments) == 4 + 3 and tracks[:4].tolist() == [0, 1, 2, 3] and 2 not in tracks[4:].tolist()
        first = {int(t): int(s[0, 0]) for t, s in zip(tracks[:4], segments[:4])}
        for t, s in zip(tracks[4:], segments[4:]):
            a, b = first[int(t)], int(s[0, 0])
            assert a // 100 == b // 100  # same track
            assert overlap_fraction(a % 100, b % 100, 9) <= 0.5
    batch = TripletBatch(torch.randn(7, 16), tracks, {}, 4)
    term = TrackRegularization(margin=10.0)  # a margin every triplet violates: the miner keeps them all
    anchors, positives, negatives = term.miner(batch.embeddings, batch.tracks)
    assert len(anchors) == 6 * 5  # 3 pairs, both ways, each with the 5 rows of other tracks
    assert torch.all(tracks[anchors] == tracks[positives]) and torch.all(anchors != positives)
    assert torch.all(tracks[negatives] != tracks[anchors])


# ------------------------------------------------------------------------------------------------
# Tempo tolerance


def test_tempo_tolerance_boundaries_are_inclusive() -> None:
    tol = TempoTolerance(positive=0.25, negative=0.5)  # binary-exact fractions: exact boundary cases
    bpm = torch.tensor([100.0, 125.0, 125.5, 150.0, 149.5, 50.0])
    similar, different = tempo_relations(bpm, tolerance=tol)
    assert similar[0, 1] and similar[1, 0]  # 25 % of the slower tempo: similar (both ways)
    assert not similar[0, 2] and not different[0, 2]  # just beyond: neither
    assert different[0, 3] and different[3, 0]  # exactly 50 %: different
    assert not different[0, 4] and not similar[0, 4]  # just short of it: neither
    assert different[0, 5] and different[5, 0]  # half tempo is a different tempo
    assert not similar.diagonal().any() and not different.diagonal().any()
    assert not (similar & different).any()


def test_default_tempo_tolerance() -> None:
    similar, different = tempo_relations(torch.tensor([100.0]), torch.tensor([104.0, 104.1, 114.9, 115.0, 96.2, 86.0]))
    assert similar[0].tolist() == [True, False, False, False, True, False]
    assert different[0].tolist() == [False, False, False, True, False, True]
    with pytest.raises(ValueError):
        TempoTolerance(positive=0.2, negative=0.1)


def test_tempo_miner_yields_exactly_the_valid_triplets() -> None:
    bpm = torch.tensor([100.0, 103.0, 106.0, 130.0, 131.0, 60.0], dtype=torch.float64)
    anchors, positives, negatives = TempoTripletMiner()(torch.randn(6, 8), bpm)
    got = set(zip(anchors.tolist(), positives.tolist(), negatives.tolist()))
    rel = lambda a, b: abs(bpm[a] - bpm[b]) / min(bpm[a], bpm[b])  # noqa: E731
    want = {(a, p, n) for a in range(6) for p in range(6) for n in range(6)
            if a != p and rel(a, p) <= 0.04 and rel(a, n) >= 0.15}
    assert got == want and (0, 2, 3) not in got  # 100 ~ 103 ~ 106, but 100 and 106 are not similar


def test_estimate_tempo_of_a_click_track(tmp_path: Path) -> None:
    import librosa

    sr = 32_000
    clicks = librosa.clicks(times=np.arange(0.25, 9.7, 0.5), sr=sr, length=10 * sr)  # 120 BPM
    sf.write(tmp_path / "clicks.wav", clicks, sr)
    assert math.isclose(estimate_tempo(tmp_path / "clicks.wav"), 120.0, rel_tol=0.04)
    assert estimate_tempo(clicks, sr) == estimate_tempo(str(tmp_path / "clicks.wav"))


# ------------------------------------------------------------------------------------------------
# End to end on a tiny SynthMusic, and the `similar` command


def test_tiny_benchmark_and_similar_cli(tiny_synthmusic: Path, offline_weights: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    from hybrid_retrieval.disentangled.benchmark import run_triplet_benchmark, triplet_table
    from hybrid_retrieval.disentangled.checkpoint import default_checkpoint

    models = tmp_path / "models"
    result = run_triplet_benchmark(tiny_synthmusic, tmp_path / "features", seed=0, n_triplets=200,
                                   overrides={"epochs": 3, "batch_size": 8}, out_dir=models)
    assert [row["config"] for row in result["rows"]] == ["csn_track", "csn", "unmasked", "specialised"]
    for row in result["rows"]:
        assert all(0.0 <= row[c] <= 1.0 for c in CONDITIONS + ["mean"])
    assert set(result["seconds"]["train"]) == {"csn_track", "csn", "unmasked", "specialised"}
    table = triplet_table(result)
    assert table.count("\n") == 5 and "| genre | mood | instrument | tempo | mean |" in table

    # a folder of wavs, one of them longer than a clip (embedded as the mean of its segments)
    audio = sorted((tiny_synthmusic / "clotho_audio_evaluation").glob("*.wav"))[:6]
    folder = tmp_path / "music"
    folder.mkdir()
    for path in audio:
        (folder / path.name).write_bytes(path.read_bytes())
    long = np.concatenate([sf.read(p, dtype="float32")[0] for p in audio[:3]])
    sf.write(folder / "long.wav", long, 32_000)
    query = str(folder / audio[0].name)
    args = ["similar", query, "--catalog", str(folder), "--condition", "tempo", "--top", "3",
            "--checkpoint", str(models / "csn_track"), "--json"]
    saved = tmp_path / "music.catalogue"
    assert main([*args, "--save-catalog", str(saved)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in out["results"]] == [1, 2, 3] and out["condition"] == "tempo"
    assert query not in [r["path"] for r in out["results"]]  # the query is left out of its own results
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    args[args.index(str(folder))] = str(saved)  # the saved catalogue gives the same answer
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"] == out["results"]

    assert main(["similar", query, "--catalog", str(folder), "--checkpoint", str(models / "csn"), "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert "(condition: all)" in text and len(text.strip().splitlines()) == 3
    assert main(["similar", query, "--catalog", str(saved), "--checkpoint", str(models / "csn")]) == 2
    assert "embedded by another model" in capsys.readouterr().err
    assert main(["similar", query, "--catalog", str(folder), "--checkpoint", str(models / "csn"),
                 "--condition", "key"]) == 2
    assert "unknown condition 'key'" in capsys.readouterr().err
    assert main(["similar", query, "--catalog", str(folder)]) == 2  # no default model in this private cache
    err = capsys.readouterr().err
    assert str(default_checkpoint()) in err and "train_disentangled.py" in err


def test_train_disentangled_installs_the_default_model(tiny_synthmusic: Path, offline_weights: Path,
                                                       tmp_path: Path) -> None:
    from hybrid_retrieval.disentangled.checkpoint import default_checkpoint, load_model
    from hybrid_retrieval.disentangled.search import SimilaritySearch
    from hybrid_retrieval.disentangled.training import split_csn_config, train_disentangled

    model_config, train_config = split_csn_config({"data_root": str(tiny_synthmusic), "cache_dir": None, "epochs": 2,
                                               "batch_size": 8, "masks": "learned", "mask_l1": 1e-3,
                                               "progress": False, "export_default": True})
    metrics = train_disentangled(model_config, train_config, tmp_path / "run")
    assert set(metrics["val_triplet_accuracy"]) == set(CONDITIONS) | {"mean"}
    model, _source, config = load_model(tmp_path / "run")
    assert config["model"]["masks"] == "learned" and config["metrics"]["val_triplet_accuracy"]
    reloaded, _, _ = load_model()  # the default model, installed by export_default
    assert torch.equal(model.masks(), reloaded.masks()) and default_checkpoint().is_dir()
    wavs = sorted((tiny_synthmusic / "clotho_audio_validation").glob("*.wav"))[:4]
    search = SimilaritySearch.from_checkpoint()
    search.catalogue = search.load_catalogue(wavs[0].parent)
    matches = search.query(wavs[1], condition="genre", top=5)
    assert len(matches) == 5 and str(wavs[1].resolve()) not in [m.path for m in matches]
    with pytest.raises(ValueError, match="unknown config key"):
        split_csn_config({"epochz": 3})


def test_train_disentangled_saves_before_evaluating(tiny_synthmusic: Path, tmp_path: Path, caplog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_retrieval.disentangled import training
    from hybrid_retrieval.disentangled.checkpoint import load_model

    data = tmp_path / "data"
    shutil.copytree(tiny_synthmusic, data)
    factors = data / "factors_validation.csv"
    factors.write_text("".join(factors.read_text().splitlines(keepends=True)[:2]))  # one track: no triplet
    model_config, train_config = training.split_csn_config({
        "data_root": str(data), "cache_dir": None, "epochs": 1, "batch_size": 8, "encoder": "melcnn",
        "embed_dim": 16, "hidden": 16, "progress": False})
    metrics = training.train_disentangled(model_config, train_config, tmp_path / "run")
    assert "val_triplet_accuracy" not in metrics and "no validation triplet accuracy" in caplog.text
    assert "no triplet can be formed" in caplog.text
    assert load_model(tmp_path / "run")[2]["metrics"]["loss"] == metrics["loss"]  # saved all the same

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(training, "evaluate_triplets", crash)
    model_config, train_config = training.split_csn_config({
        "data_root": str(tiny_synthmusic), "cache_dir": None, "epochs": 1, "batch_size": 8, "encoder": "melcnn",
        "embed_dim": 16, "hidden": 16, "progress": False})
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        training.train_disentangled(model_config, train_config, tmp_path / "crashed")
    assert load_model(tmp_path / "crashed")[0].config.embed_dim == 16  # the trained model was kept
