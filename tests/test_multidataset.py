"""Training on several datasets at once: Clotho-layout tones + a tiny AudioCaps + a tiny WavCaps,
with a Freesound exclusion list and per-dataset weights; checkpoint, exact resume, evaluation."""
from __future__ import annotations

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

from hybrid_retrieval.data.items import caption_pairs
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.experiments.config import load_named
from hybrid_retrieval.training import loop
from hybrid_retrieval.training.checkpoint import find_checkpoint, load_checkpoint
from hybrid_retrieval.training.config import TrainConfig, split_config
from hybrid_retrieval.training.loop import (
    GlobalBatchSampler,
    load_items,
    load_training_items,
)

AUDIOCAPS_CLIPS = [("abc123def45", 30, "a dog barks twice"), ("xyz987uvw65", 0, "an engine idles"),
                   ("qwe456rty78", 10, "rain falls on leaves"), ("zxc321vbn09", 50, "a crowd applauds")]


def write_audiocaps(root: Path) -> Path:
    """train.csv (two captions per clip) and the clips as audio/train/{youtube_id}_{start}.wav."""
    sr = 32_000
    rows = []
    for i, (ytid, start, phrase) in enumerate(AUDIOCAPS_CLIPS):
        rows += [[10 * i, ytid, start, phrase], [10 * i + 1, ytid, start, f"{phrase} nearby"]]
        path = root / "audio" / "train" / f"{ytid}_{start}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(sr) / sr
        sf.write(path, (0.3 * np.sin(2 * np.pi * (250 + 150 * i) * t)).astype(np.float32), sr)
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        writer.writerows(rows)
    return root


@pytest.fixture()
def three_datasets(tmp_path: Path, tone_dataset: Path, wavcaps_root: Path) -> dict:
    """A flat config training on the three sets, validating on the tones' validation split, with an
    exclusion list naming tone clips 3 and 7, WavCaps' FreeSound clip 180913 and an unknown id."""
    excluded = tmp_path / "dcase2025_task6_excluded_freesound_ids.csv"
    excluded.write_text("sound_id\n3\n7\n180913\n999999\n")
    return {"dataset": "clotho", "data_root": str(tone_dataset), "val_split": "validation",
            "datasets": [{"name": "clotho", "root": str(tone_dataset), "split": "development"},
                         {"name": "audiocaps", "root": str(write_audiocaps(tmp_path / "audiocaps")), "split": "train"},
                         {"name": "wavcaps", "root": str(wavcaps_root), "split": "train"}],
            "exclude_freesound_ids": str(excluded), "batch_size": 8, "cache_dir": str(tmp_path / "features"),
            "progress": False, "lr_head": 3e-3}


def weighted(flat: dict, weights: tuple[float, ...]) -> dict:
    return {**flat, "datasets": [{**entry, "weight": w} for entry, w in zip(flat["datasets"], weights)]}


EXCLUSION_LOG = ("dropped 2 of 16 clips of clotho/development, 0 of 4 clips of audiocaps/train, "
                 "1 of 5 clips of wavcaps/train")


def test_exclusion_counts_and_concatenation(three_datasets: dict, caplog: pytest.LogCaptureFixture) -> None:
    _, cfg = split_config(three_datasets)
    with caplog.at_level(logging.INFO, logger="hybrid_retrieval"):
        loaded = load_training_items(cfg)
    (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert line == f"{three_datasets['exclude_freesound_ids']}: {EXCLUSION_LOG}"
    ids = [item.item_id for item in loaded.items]
    tones = [f"development clip {i:02d}.wav" for i in range(16) if i not in (3, 7)]
    audiocaps = [f"{ytid}_{start}" for ytid, start, _ in AUDIOCAPS_CLIPS]
    wavcaps = ["AudioSet_SL/Y---1_cCGK4M.flac", "BBC_Sound_Effects/07070001.flac", "FreeSound/80399.flac",
               "SoundBible/2218.flac"]  # FreeSound/555 has no audio, 180913 is excluded
    assert ids == tones + audiocaps + wavcaps
    assert loaded.item_weights is None  # no weights: every pair equally likely, as with one dataset


def test_without_datasets_nothing_changes(tone_dataset: Path, tmp_path: Path) -> None:
    _, cfg = split_config({"dataset": "clotho", "data_root": str(tone_dataset), "train_split": "development",
                           "limit_items": 12})
    loaded = load_training_items(cfg)
    assert [i.item_id for i in loaded.items] == [i.item_id for i in load_items(cfg, "development")]
    assert len(loaded.items) == 12 and loaded.item_weights is None
    excluded = tmp_path / "ids.csv"
    excluded.write_text("sound_id\n0\n11\n")  # the exclusion list applies to a single dataset as well
    _, cfg = split_config({"dataset": "clotho", "data_root": str(tone_dataset), "train_split": "development",
                           "exclude_freesound_ids": str(excluded)})
    assert [i.freesound_id for i in load_training_items(cfg).items] == [str(i) for i in range(1, 16) if i != 11]


def test_weights_set_each_datasets_share(three_datasets: dict) -> None:
    """Pairs are drawn so that dataset d's share of an epoch is weight_d / sum(weights), whatever
    its size; checked over 50 epochs (4,000 draws) against the binomial spread."""
    for weights in [(1.0, 1.0, 2.0), (3.0, 1.0, 1.0)]:
        _, cfg = split_config(weighted(three_datasets, weights))
        loaded = load_training_items(cfg)
        owners, _ = caption_pairs(loaded.items)
        source = [0] * 14 + [1] * 4 + [2] * 4  # per item, as concatenated
        sampler = GlobalBatchSampler(len(owners), 8, seed=0, weights=[loaded.item_weights[o] for o in owners])
        counts = np.zeros(3)
        for epoch in range(50):
            sampler.epoch = epoch
            for batch in sampler:
                for pair in batch:
                    counts[source[owners[pair]]] += 1
        draws = counts.sum()
        assert draws == 50 * 80  # 82 pairs, batches of 8: the epoch length of an unweighted run
        for d, w in enumerate(weights):
            share = w / sum(weights)
            assert abs(counts[d] - draws * share) < 4 * math.sqrt(draws * share * (1 - share)), (weights, counts)


def test_weighted_batches_are_the_same_for_any_process_count_and_epoch_seeded() -> None:
    weights = [1.0] * 30 + [5.0] * 20
    one = list(GlobalBatchSampler(50, 8, seed=3, weights=weights))
    ranks = [list(GlobalBatchSampler(50, 8, seed=3, rank=r, world=2, weights=weights)) for r in range(2)]
    assert len(one) == 6
    assert all(ranks[0][b] + ranks[1][b] == batch for b, batch in enumerate(one))
    assert list(GlobalBatchSampler(50, 8, seed=3, weights=weights)) == one  # same (seed, epoch): same draws
    later = GlobalBatchSampler(50, 8, seed=3, weights=weights)
    later.epoch = 1
    assert list(later) != one
    with pytest.raises(ValueError, match="49 sampling weights for 50 pairs"):
        GlobalBatchSampler(50, 8, seed=0, weights=weights[:49])


def test_train_resume_evaluate_on_three_datasets(three_datasets: dict, tmp_path: Path, offline_weights: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Frozen towers: trains, checkpoints, resumes bit-identically with weighted sampling, and
    evaluates; no excluded (or audio-less) clip ever reaches a batch."""
    flat = weighted(three_datasets, (1.0, 1.0, 2.0))
    loaded, batches = [], []
    real_load, real_step = loop.load_training_items, loop.train_step

    def spy_load(cfg: TrainConfig):
        loaded.append(real_load(cfg))
        return loaded[-1]

    def spy_step(net, model, loss_fn, optimizer, inputs, item_ids, *args, **kwargs):
        batches.append((len(loaded) - 1, item_ids.tolist()))
        return real_step(net, model, loss_fn, optimizer, inputs, item_ids, *args, **kwargs)

    monkeypatch.setattr(loop, "load_training_items", spy_load)
    monkeypatch.setattr(loop, "train_step", spy_step)
    model_config, straight = split_config({**flat, "epochs": 2})
    with caplog.at_level(logging.INFO, logger="hybrid_retrieval"):
        result = loop.train(model_config, straight, tmp_path / "straight")
    assert EXCLUSION_LOG in caplog.text
    _, first = split_config({**flat, "epochs": 1})
    loop.train(model_config, first, tmp_path / "interrupted")
    _, resumed_cfg = split_config({**flat, "epochs": 2, "resume": str(tmp_path / "interrupted")})
    resumed = loop.train(model_config, resumed_cfg, tmp_path / "resumed")

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "epoch-0002" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "epoch-0002" / "model.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        assert (a[key] == b[key]).all(), key

    # batches: 10 per epoch (80 of 82 pairs), 2 + 1 + 1 epochs over the three runs
    assert len(batches) == 40 and all(len(ids) == 8 for _, ids in batches)
    seen = [loaded[run].items[i] for run, ids in batches for i in ids]
    assert not {item.freesound_id for item in seen} & {"3", "7", "180913"}
    assert "FreeSound/555.flac" not in {item.item_id for item in seen}
    names = {item.item_id for item in seen}
    assert any(n.startswith("development clip") for n in names)  # every dataset reaches the batches
    assert names & {f"{ytid}_{start}" for ytid, start, _ in AUDIOCAPS_CLIPS}
    assert any(n.startswith(("AudioSet_SL/", "BBC_Sound_Effects/", "FreeSound/", "SoundBible/")) for n in names)

    # evaluation: the reported validation metrics are those of the saved checkpoint
    t2a = result["val"]["text_to_audio"]
    assert set(t2a) == {"mAP@10", "R@1", "R@5", "R@10"} and 0 <= t2a["mAP@10"] <= 1
    assert resumed["val"] == result["val"]
    model, _ = load_checkpoint(find_checkpoint(str(tmp_path / "resumed")))
    again = evaluate(model, load_items(straight, "validation"), None, progress=False)
    assert again["text_to_audio"] == pytest.approx(t2a, abs=1e-6)


@pytest.mark.parametrize(("datasets", "message"), [
    ([], "empty list"),
    ([{"name": "clotho", "root": "data/clotho"}], r"missing \['split'\]"),
    ([{"name": "clotho", "root": "r", "split": "development", "share": 2}], r"unknown \['share'\]"),
    (["clotho"], "expected a mapping"),
    ([{"name": "clotho", "root": "r", "split": "development", "weight": 0}], "positive number, not 0"),
    ([{"name": "clotho", "root": "r", "split": "development", "weight": 1},
      {"name": "wavcaps", "root": "w", "split": "train"}],
     r"every entry a weight or none \(no weight: \['wavcaps'\]\)"),
])
def test_datasets_entries_are_checked(datasets: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_config({"datasets": datasets})


def test_exclusion_file_errors_come_before_training(tone_dataset: Path, tmp_path: Path) -> None:
    _, cfg = split_config({"dataset": "clotho", "data_root": str(tone_dataset), "train_split": "development",
                           "exclude_freesound_ids": str(tmp_path / "absent.csv")})
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_training_items(cfg)


def test_named_config_for_the_dcase_protocol_parses(tmp_path: Path) -> None:
    """`scripts/train.py with clotho_audiocaps_wavcaps` composes (sacred) and splits into valid
    configs; other places for the data come from a YAML file or an inline list (README)."""
    root = Path(__file__).resolve().parents[1]
    paths = tmp_path / "my_paths.yaml"
    paths.write_text("data_root: /d/clotho\nexclude_freesound_ids: /d/ids.csv\n"
                     "datasets:\n  - {name: wavcaps, root: /d/wavcaps, split: fsd, weight: 2}\n")
    inline = 'datasets=[{"name": "clotho", "root": "/e/clotho", "split": "development"}]'
    runs = [["with", "clotho_audiocaps_wavcaps"], ["with", "clotho_audiocaps_wavcaps", str(paths), inline]]
    outputs = []
    for args in runs:
        out = subprocess.run([sys.executable, "scripts/train.py", "print_config", *args], cwd=root,
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout)
    assert "{'name': 'wavcaps', 'root': 'data/wavcaps', 'split': 'train'}" in outputs[0]
    assert "exclude_freesound_ids = '/d/ids.csv'" in outputs[1] and "data_root = '/d/clotho'" in outputs[1]
    assert "[{'name': 'clotho', 'root': '/e/clotho', 'split': 'development'}]" in outputs[1]  # inline wins
    model_config, cfg = split_config(load_named("clotho_audiocaps_wavcaps"))
    assert [(e["name"], e["split"]) for e in cfg.training_datasets()] == [
        ("clotho", "development"), ("audiocaps", "train"), ("wavcaps", "train")]
    assert (cfg.dataset, cfg.val_split) == ("clotho", "validation")
    assert cfg.exclude_freesound_ids == "data/clotho/dcase2025_task6_excluded_freesound_ids.csv"
    assert not cfg.freeze_audio and not cfg.freeze_text and model_config.text_encoder == "roberta-large"
