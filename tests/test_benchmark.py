"""scripts/benchmark.py end to end on a tiny SynthMusic set (two rows, one epoch)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402


def test_row_configs_exist_and_merge() -> None:
    for _, names in benchmark.ROWS:
        for name in names:
            assert benchmark.named_config(name)["fusion"] in {"none", "metadata", "late", "mid"}
    merged = benchmark.merge({"fusion_options": {"mid": {"width": 8, "layers": 1}}},
                             {"fusion_options": {"mid": {"width": 16}}, "fusion": "mid"})
    assert merged == {"fusion_options": {"mid": {"width": 16, "layers": 1}}, "fusion": "mid"}
    assert benchmark.encoder_choice_matters(["late_os"], {"freeze_text": True})
    assert not benchmark.encoder_choice_matters(["mid_os"], {"freeze_text": True})
    assert benchmark.encoder_choice_matters(["mid_os"], {"freeze_text": False})
    assert benchmark.summarise([{"mAP@10": 0.5, "R@1": 0.1, "R@5": 0.2, "R@10": 0.3}])["mAP@10"] == "0.5000"


@pytest.fixture(scope="module")
def tiny_synthmusic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybrid_retrieval.data.synthmusic import generate_synthmusic

    return generate_synthmusic(tmp_path_factory.mktemp("synthmusic"), seed=1, n_train=16, n_val=8, n_eval=8,
                               seconds=4.0, progress=False)


def test_benchmark_table(tiny_synthmusic: Path, tmp_path: Path, offline_weights: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the feature cache of the dataset config is relative
    out = tmp_path / "results"
    assert benchmark.main(["--dataset", "synthmusic", "--root", str(tiny_synthmusic), "--epochs", "1",
                           "--rows", "content_only,late_cs", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    table = json.loads((out / "table.json").read_text())["rows"]
    assert set(table) == {"random", "content-only", "late fusion, CS", "late fusion, CS, separate encoder"}
    for row in table.values():
        assert 0.0 <= row["per_seed"][0]["mAP@10"] <= 1.0
    assert table["late fusion, CS, separate encoder"]["configs"] == ["late_cs", "separate_encoder"]
    markdown = (out / "table.md").read_text()
    assert "| content-only |" in markdown and "Command: `python scripts/benchmark.py" in markdown
