"""`hybrid-retrieval tag` and `--version`."""
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from hybrid_retrieval.cli import main


def test_tag_json(shared: Path, capsys, weights_dir: Path) -> None:
    ref = json.loads((shared / "reference" / "efficientat_mn04_as.json").read_text())["clips"]
    files = [str(shared / "audio" / name) for name in ("music.wav", "metro_station-paris.wav")]
    assert main(["tag", *files, "--weights", str(weights_dir / "mn04_as_mAP_432.pt"), "--json", "--top", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["file"] for d in lines] == files
    for d in lines:
        name = Path(d["file"]).name
        assert set(d) == {"file", "top", "logits"} and len(d["logits"]) == 527 and len(d["top"]) == 5
        assert [label for label, _ in d["top"]] == [label for label, _ in ref[name]["top10"][:5]]
    assert np.abs(np.array(lines[0]["logits"]) - np.array(ref["music.wav"]["logits"])).max() < 1e-3
    # both sides are rounded to 6 decimals, and embedding folds the batch norms into the convolutions
    # (float rounding of ~1e-6 in the logits): agreement to 1e-5 is what can be asked of a probability
    assert abs(lines[0]["top"][0][1] - ref["music.wav"]["top10"][0][1]) < 1e-5


def test_tag_table_and_bad_file(shared: Path, tmp_path: Path, capsys, offline_weights: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF nonsense")
    assert main(["tag", str(shared / "audio" / "music.wav"), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "Music" in captured.out and "Guitar" in captured.out
    assert "broken.wav" in captured.err and captured.err.count("error:") == 1


def test_tag_without_weights_offline(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(tmp_path))
    assert main(["tag", "x.wav", "--model", "mn10_as"]) == 2
    assert "mn10_as_mAP_471.pt" in capsys.readouterr().err


def test_tag_with_another_models_weights_is_one_line(weights_dir: Path, capsys) -> None:
    """mn04_as weights given for mn10_as: one error line naming the file and a tensor, no traceback."""
    weights = weights_dir / "mn04_as_mAP_432.pt"
    assert main(["tag", "x.wav", "--model", "mn10_as", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(weights) in err and "does not fit EfficientAT mn10_as" in err
    assert "tensor 'features.0.0.weight'" in err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main(["--version"])
    assert exit_status.value.code == 0
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert capsys.readouterr().out == f"hybrid-retrieval {version}\n"


def test_tag_on_a_named_device(shared: Path, capsys, offline_weights: Path) -> None:
    """--device cpu gives what the default (auto, the CPU here) gives; on a GPU machine auto is CUDA."""
    clip = str(shared / "audio" / "music.wav")
    assert main(["tag", clip, "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert main(["tag", clip, "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    tolerance = 1e-6 if not torch.cuda.is_available() else 1e-3  # GPU kernels round differently
    assert [label for label, _ in on_cpu["top"]] == [label for label, _ in default["top"]]
    assert np.abs(np.array(on_cpu["logits"]) - np.array(default["logits"])).max() <= tolerance
