"""The hybrid-retrieval table (scripts/benchmark.py) end to end on a tiny SynthMusic set (two rows, one epoch)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_retrieval.experiments import retrieval_table as table_module
from hybrid_retrieval.experiments.config import compose, list_named, load_named, merge

ROOT = Path(__file__).resolve().parents[1]


def test_row_configs_exist_and_merge() -> None:
    for _, names in table_module.ROWS:
        for name in names:
            assert load_named(name)["fusion"] in {"none", "metadata", "late", "mid"}
    merged = merge({"fusion_options": {"mid": {"width": 8, "layers": 1}}},
                   {"fusion_options": {"mid": {"width": 16}}, "fusion": "mid"})
    assert merged == {"fusion_options": {"mid": {"width": 16, "layers": 1}}, "fusion": "mid"}
    composed = compose(["synthmusic", "mid_os"], {"fusion_options": {"mid": {"layers": 3}}, "seed": 2})
    assert composed["fusion_options"]["mid"] == {"width": 128, "layers": 3, "heads": 4, "audio_pool": 4,
                                                 "dropout": 0.0}
    assert (composed["fusion"], composed["metadata"], composed["seed"]) == ("mid", "os", 2)
    assert table_module.encoder_choice_matters(["late_os"], {"freeze_text": True})
    assert not table_module.encoder_choice_matters(["mid_os"], {"freeze_text": True})
    assert table_module.encoder_choice_matters(["mid_os"], {"freeze_text": False})
    assert table_module.summarise([{"mAP@10": 0.5, "R@1": 0.1, "R@5": 0.2, "R@10": 0.3}])["mAP@10"] == "0.5000"


def test_named_configs_are_package_data() -> None:
    """The library reads its configs through importlib.resources, and configs/ at the top is that folder."""
    assert "synthmusic" in list_named() and "csn_track" in list_named("disentangled")
    assert (ROOT / "configs").resolve() == (ROOT / "hybrid_retrieval" / "configs").resolve()
    code = ("import os, hybrid_retrieval.experiments.config as c; os.chdir('/'); "
            "print(c.load_named('csn_track', 'disentangled')['masks'])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "fixed"
    with pytest.raises(ValueError, match="no named retrieval config 'nope'"):
        load_named("nope")


@pytest.fixture(scope="module")
def tiny_synthmusic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybrid_retrieval.data.synthmusic import generate_synthmusic

    return generate_synthmusic(tmp_path_factory.mktemp("synthmusic"), seed=1, n_train=16, n_val=8, n_eval=8,
                               seconds=4.0, progress=False)


def test_benchmark_table(tiny_synthmusic: Path, tmp_path: Path, offline_weights: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the feature cache of the dataset config is relative
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import benchmark  # the script: a thin shell over retrieval_table

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
