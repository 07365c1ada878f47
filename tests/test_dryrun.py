"""The full-scale dry run's code path on a tiny size: the Clotho-layout generator and one
end-to-end run (loader and step measurements in their subprocesses, small towers)."""
import json
from pathlib import Path

import soundfile as sf

from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.experiments.dryrun import clotho_like_name, run_dryrun, write_clotho_like_split


def test_the_generated_split_reads_back_as_clotho(tmp_path: Path) -> None:
    written = write_clotho_like_split(tmp_path / "a", n_clips=30, seconds=(0.5, 1.0), workers=2)
    items = load_split("clotho", tmp_path / "a", "development")
    names = [item.item_id for item in items]
    assert names == [clotho_like_name(i) for i in range(30)]  # every quirky name survives the CSV
    assert any(n.startswith(" ") for n in names) and any("&#39;" in n for n in names) and any("," in n for n in names)
    assert all(len(item.captions) == 5 for item in items) and items[3].metadata["os"][1] == "generated"
    frames = 0
    for item in items:
        info = sf.info(str(item.audio_path))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (44_100, 1, "PCM_16", "WAV")
        assert 0.5 <= info.duration <= 1.0
        frames += info.frames
    assert written["clips"] == 30 and abs(written["audio_hours"] - frames / 44_100 / 3600) < 1e-12
    assert written["bytes"] == sum(item.audio_path.stat().st_size for item in items)
    write_clotho_like_split(tmp_path / "b", n_clips=30, seconds=(0.5, 1.0), workers=1)  # same seed, one process
    assert all((tmp_path / "b" / "development" / n).read_bytes() == (tmp_path / "a" / "development" / n).read_bytes()
               for n in names)


def test_dryrun_end_to_end_on_a_tiny_split(tmp_path: Path, capsys) -> None:
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    assert run_dryrun(["--clips", "8", "--seconds", "1,2", "--scratch", str(scratch), "--gen-workers", "1",
                       "--loader-workers", "0", "--loader-batches", "1", "--loader-batch-size", "4",
                       "--step-batch-sizes", "2", "--steps", "1", "--clip-seconds", "1.5",
                       "--audio-encoder", "efficientat:mn04_as", "--out", str(out), "--text-shape",
                       '{"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}'
                       ]) == 0
    result = json.loads((out / "dryrun.json").read_text())
    assert result["generated"]["clips"] == 8 and result["loader"]["0"]["pairs_per_s"] > 0
    assert result["loader"]["0"]["crop_samples"] == 48_000 and result["steps"]["2"]["step_s"] > 0
    assert result["steps"]["2"]["text_params"] < 3e6 and "limits the step rate" in result["verdict"]
    markdown = (out / "dryrun.md").read_text()
    assert "### Loader alone (no model)" in markdown and "| num_workers=0 |" in markdown
    assert not any(scratch.iterdir())  # the generated split is deleted afterwards
