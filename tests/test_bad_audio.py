"""One bad audio file never stops a batch: it is skipped with one warning naming it and counted,
the rest is processed (tag, catalogues of index build and similar, the feature cache, training
data); short clips are padded to the front end's minimum; damaged files get clear messages."""
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval.audio.io import AudioLoadError, audio_info, check_audio, load_audio, usable_audio
from hybrid_retrieval.cli import main
from hybrid_retrieval.data.catalogue import load_catalogue
from hybrid_retrieval.embedding import audio_outputs
from hybrid_retrieval.training.config import split_config
from hybrid_retrieval.training.loop import build_model, load_training_items, training_data

SR = 32_000


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def bad_folder(folder: Path) -> dict[str, Path]:
    """Two good clips, three short ones (the front end pads them) and three that cannot be used."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"good_a": folder / "good_a.wav", "good_b": folder / "good_b.flac", "one_sample": folder / "one.wav",
             "short_513": folder / "short513.wav", "short_2": folder / "two.wav", "nan": folder / "nan.wav",
             "inf": folder / "inf.wav", "text_mp3": folder / "notes.mp3"}
    sf.write(files["good_a"], _tone(2.0, 300.0), SR)
    sf.write(files["good_b"], _tone(1.5, 1200.0), SR)
    sf.write(files["one_sample"], np.array([0.5], dtype=np.float32), SR)
    sf.write(files["short_513"], _tone(1.0)[:513], SR)
    sf.write(files["short_2"], _tone(1.0)[:2], SR, subtype="FLOAT")
    sf.write(files["nan"], np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    sf.write(files["inf"], np.full((SR, 2), np.inf, dtype=np.float32), SR, subtype="DOUBLE")
    files["text_mp3"].write_text("these are my notes, not a song\n" * 20)
    return files


BAD = ("nan", "inf", "text_mp3")


def test_a_text_file_named_mp3_is_not_an_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "song.mp3"
    path.write_text("definitely not audio\n" * 30)
    with pytest.raises(AudioLoadError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and "not an audio file" in message and "pipe" not in message


def test_a_truncated_wav_is_read_as_far_as_it_goes_with_a_warning(tmp_path: Path, caplog) -> None:
    data = _tone(1.0)
    path = tmp_path / "cut.wav"
    sf.write(path, data, SR, subtype="PCM_16")
    full = load_audio(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(44 + 2 * 12_000)  # the 44-byte header promises 32000 frames; 12000 remain
    assert size > path.stat().st_size
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        wave = load_audio(path)
        load_audio(path, offset=0.1, duration=0.1)  # said once per file, however often it is read
    assert np.array_equal(wave, full[:12_000]) and audio_info(path).frames == 12_000
    notes = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(notes) == 1 and str(path) in notes[0]


def test_check_audio_reads_headers_and_scans_float_files(tmp_path: Path, caplog) -> None:
    files = bad_folder(tmp_path / "files")
    for key in ("good_a", "good_b", "one_sample", "short_513", "short_2"):
        assert check_audio(files[key]).frames >= 1
    for key in BAD:
        with pytest.raises(AudioLoadError, match=str(files[key]).replace(".", r"\.")):
            check_audio(files[key])
    partly = tmp_path / "partly.wav"  # NaN first, one finite sample in the third block: usable
    data = np.full(200_000, np.nan, dtype=np.float32)
    data[150_000] = 0.1
    sf.write(partly, data, SR, subtype="FLOAT")
    check_audio(partly)
    paths = list(files.values())
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        usable = usable_audio(paths, "test files")
    assert [p for p, ok in zip(paths, usable) if not ok] == [files[k] for k in BAD]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all(str(files[k]) in line for k, line in zip(BAD, lines))
    assert lines[-1] == "skipped 3 of 8 test files that cannot be used as audio"


def test_audio_outputs_skip_bad_files_and_cache_the_rest(tmp_path: Path, mn04, caplog) -> None:
    files = bad_folder(tmp_path / "files")
    paths = list(files.values()) + [tmp_path / "files" / "missing.wav"]
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        outputs = audio_outputs(mn04, paths, tmp_path / "cache", progress=False)
    failed = [p for p, out in zip(paths, outputs) if out is None]
    assert failed == [files[k] for k in BAD] + [paths[-1]]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4 and all(str(p) in w for p, w in zip(failed, warnings))
    good = [p for p, out in zip(paths, outputs) if out is not None]
    direct = mn04.embed_waveforms([load_audio(p) for p in good])
    for out, ref in zip([o for o in outputs if o is not None], direct):
        torch.testing.assert_close(out.embedding, ref.embedding, rtol=0, atol=1e-5)
    shards = list((tmp_path / "cache").glob("*/audio/*.safetensors"))
    assert len(shards) == 1  # the good files' complete shard; nothing stored for the failures
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        caplog.clear()
        again = audio_outputs(mn04, paths, tmp_path / "cache", progress=False)
    assert [o is None for o in again] == [o is None for o in outputs]
    for a, b in zip(again, outputs):
        assert a is None or torch.equal(a.embedding, b.embedding)


def test_tag_goes_on_after_bad_files(tmp_path: Path, capsys, offline_weights: Path) -> None:
    files = bad_folder(tmp_path / "files")
    order = ["good_a", "nan", "one_sample", "text_mp3", "short_513", "inf", "good_b"]
    assert main(["tag", *[str(files[k]) for k in order], "--top", "3"]) == 1
    captured = capsys.readouterr()
    tagged = [line for line in captured.out.splitlines() if not line.startswith(" ")]
    assert tagged == [str(files[k]) for k in order if k not in BAD]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all(str(files[k]) in line for k, line in zip(("nan", "text_mp3", "inf"), errors))
    assert "tagged 4 of 7 files; 3 could not be read" in captured.err


def test_catalogues_skip_bad_files(tmp_path: Path, caplog) -> None:
    """The catalogue of `index build` and `similar --catalog`: bad files dropped, one warning each."""
    files = bad_folder(tmp_path / "files")
    with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
        items = load_catalogue(tmp_path / "files")
    assert sorted(item.audio_path for item in items) == sorted(p for k, p in files.items() if k not in BAD)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("skipped 3 of 8 files of ")


def test_similar_catalogue_skips_bad_files(tmp_path: Path, mn04) -> None:
    from hybrid_retrieval.disentangled.features import TowerTokens
    from hybrid_retrieval.disentangled.model import ConditionalSimilarityNet, CSNConfig
    from hybrid_retrieval.disentangled.search import SimilaritySearch

    files = bad_folder(tmp_path / "files")
    torch.manual_seed(0)
    search = SimilaritySearch(ConditionalSimilarityNet(CSNConfig(embed_dim=16), mn04.embed_dim), TowerTokens(mn04))
    catalogue = search.load_catalogue(tmp_path / "files")
    expected = sorted(str(p.resolve()) for k, p in files.items() if k not in BAD)
    assert sorted(catalogue.paths) == expected and catalogue.embeddings.shape == (len(expected), 16)
    assert torch.isfinite(catalogue.embeddings).all()


def test_training_data_drops_bad_clips_when_loaded(tmp_path: Path, tone_dataset: Path, offline_weights: Path,
                                                    caplog) -> None:
    root = tmp_path / "data"
    shutil.copytree(tone_dataset, root)
    audio = sorted((root / "clotho_audio_development").glob("*.wav"))
    sf.write(audio[1], np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    audio[4].write_text("not audio any more")
    for frozen in (True, False):
        model_config, cfg = split_config({"dataset": "clotho", "data_root": str(root), "batch_size": 8,
                                          "freeze_audio": frozen, "progress": False, "clip_seconds": 1.0})
        model = build_model(model_config, cfg)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hybrid_retrieval"):
            items = load_training_items(cfg).items  # bad clips are dropped here, before training starts
            data = training_data(model, cfg, items, str(tmp_path / "cache"), progress=False)
        lines = [r.getMessage() for r in caplog.records]
        assert str(audio[1]) in lines[0] and str(audio[4]) in lines[1]
        assert lines[2] == "skipped 2 of 16 training clips of clotho/train that cannot be used as audio"
        assert len(data.dataset) == 14 * 5 and {item.audio_path for item in data.dataset.items} == \
            set(audio) - {audio[1], audio[4]}
        batch = next(iter(data.loader))  # every batch is made of usable clips
        inputs = data.provider(batch, torch.device("cpu"))
        if not frozen:
            assert inputs["audio"].shape == (8, SR) and torch.isfinite(inputs["audio"]).all()


def test_embed_catalogue_names_a_file_that_slipped_through(tmp_path: Path, offline_weights: Path) -> None:
    """Callers that need every file (evaluation, an index of given paths) get one error naming the
    files that cannot be embedded; the usable ones before them stay in the cache."""
    from hybrid_retrieval.embedding import embed_catalogue
    from hybrid_retrieval.errors import BadInputError
    from hybrid_retrieval.model import create_model

    files = bad_folder(tmp_path / "files")
    model = create_model("mn04_minilm", embed_dim=16).eval()
    paths = [files["good_a"], files["nan"], files["good_b"]]
    with pytest.raises(BadInputError, match=r"1 audio file\(s\) cannot be embedded: .*nan\.wav"):
        embed_catalogue(model, paths, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*/audio/*.safetensors"))) == 1  # the good files are kept
