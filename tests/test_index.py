"""The search index: CLI round trip, metadata fusion, model checks, atomic writes, approximate recall."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval import index as index_module
from hybrid_retrieval.cli import main
from hybrid_retrieval.data.catalogue import load_catalogue
from hybrid_retrieval.embedding import embed_catalogue
from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.index import load_index
from hybrid_retrieval.index.backends import exact as exact_module
from hybrid_retrieval.index.backends.base import recall_at_k
from hybrid_retrieval.index.backends.exact import exact_search
from hybrid_retrieval.index.backends.faiss_backend import FaissBackend
from hybrid_retrieval.index.residency import FileRows
from hybrid_retrieval.model import create_model
from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000


@pytest.fixture(scope="module")
def fresh_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four clips the model never saw, one per sound kind of the tone dataset, under sub-folders."""
    folder = tmp_path_factory.mktemp("catalogue")
    t = np.arange(int(SR * 2.3)) / SR
    kinds = {"x/a.wav": np.sin(2 * np.pi * 120 * t), "x/b.wav": np.sin(2 * np.pi * 2150 * t),
             "y/c.flac": np.random.default_rng(1).standard_normal(len(t)) * 0.5, "d.wav": np.sin(2 * np.pi * 640 * t)}
    for name, wave in kinds.items():
        (folder / name).parent.mkdir(exist_ok=True)
        sf.write(folder / name, (0.3 * wave).astype(np.float32), SR)
    (folder / "notes.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF nonsense")
    return folder


def test_cli_build_and_search_round_trip(trained_run: Path, fresh_clips: Path, tmp_path: Path,
                                         offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tones.index"
    assert main(["index", "build", str(fresh_clips), "--checkpoint", str(trained_run), "--out", str(out)]) == 0
    assert "indexed 4 items" in capsys.readouterr().out  # broken.wav skipped, notes.txt not audio

    assert main(["search", str(out), "a high whistle sounds", "a low hum drones", "--json", "--top", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == ["a high whistle sounds", "a low hum drones"]
    assert lines[0]["results"][0]["id"] == "x/b.wav" and lines[1]["results"][0]["id"] == "x/a.wav"
    assert [r["rank"] for r in lines[0]["results"]] == [1, 2, 3]
    assert lines[0]["results"][0]["path"] == str((fresh_clips / "x" / "b.wav").resolve())

    assert main(["search", str(out), "white noise hisses"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "'white noise hisses'" and table[2].split()[:1] == ["1"] and table[2].endswith("y/c.flac")

    assert main(["index", "info", str(out)]) == 0
    assert "4 items, 64-d" in capsys.readouterr().out


def _export(model, folder: Path) -> Path:
    return save_checkpoint(folder, model, {"audio_pretrained": True}, TrainingState(1, 1), frozen=("audio", "text"))


def test_hybrid_index_fuses_dataset_or_csv_metadata(tone_dataset: Path, tmp_path: Path, offline_weights: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=32).eval()
    checkpoint = _export(model, tmp_path / "hybrid")
    out = tmp_path / "hybrid.index"
    assert main(["index", "build", f"clotho:{tone_dataset}:evaluation", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--approximate", "hnsw"]) == 0
    assert "recall@10 1.000 against exact search on 40 queries given" in capsys.readouterr().out  # the captions
    index = load_index(out)
    assert len(index) == 8 and index.ids[0] == "evaluation clip 00.wav"
    assert index.metadata[0] == "low, tone, clip0" and index.info["embedding"]["metadata_kinds"] == "os"
    expected = embed_catalogue(model, index.paths, index.metadata, progress=False)
    torch.testing.assert_close(index.embeddings, expected, atol=1e-5, rtol=0)
    audio_only = embed_catalogue(model, index.paths, None, progress=False)
    assert (index.embeddings - audio_only).abs().max() > 1e-2  # the metadata moved the items

    csv = tmp_path / "meta.csv"
    csv.write_text("file_name,keywords,description\nevaluation clip 01.wav,whistle;bright,\n")
    items = load_catalogue(f"clotho:{tone_dataset}:evaluation", csv)
    assert items[1].metadata == {"os": ["whistle", "bright"]}  # the CSV replaces the dataset's row
    assert items[0].metadata_text("os") == "low, tone, clip0"  # items the CSV does not name keep theirs
    with pytest.raises(ValueError, match="neither a folder nor a dataset split"):
        load_catalogue("nowhere:at:all")


def test_search_refuses_a_different_checkpoint(trained_run: Path, fresh_clips: Path, tmp_path: Path,
                                               offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tones.index"
    assert main(["index", "build", str(fresh_clips), "--checkpoint", str(trained_run), "--out", str(out)]) == 0
    capsys.readouterr()
    torch.manual_seed(1)
    other = _export(create_model("mn04_minilm", embed_dim=64).eval(), tmp_path / "other")
    assert main(["search", str(out), "a high whistle sounds", "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert "built with checkpoint" in err and "query projection weights" in err and "rebuild" in err
    moved = load_index(out)
    moved.info["checkpoint"]["path"] = str(tmp_path / "gone")
    index_module.save_index(moved, out)
    assert main(["search", str(out), "a high whistle sounds"]) == 2
    assert "pass --checkpoint" in capsys.readouterr().err
    assert main(["search", str(out), "a high whistle sounds", "--checkpoint", str(trained_run)]) == 0


def _random_index(n: int = 3000, dim: int = 32, seed: int = 0) -> index_module.SearchIndex:
    """Unit vectors near 40 random directions (clustered, like learned embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, dim, generator=generator)
    x = centres[torch.randint(40, (n,), generator=generator)] + 0.5 * torch.randn(n, dim, generator=generator)
    x = torch.nn.functional.normalize(x, dim=1)
    info = {"size": n, "dim": dim}
    ids = [f"item{i}" for i in range(n)]
    return index_module.SearchIndex(x, ids, ids, [""] * n, info)


def test_atomic_write_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.index"
    index_module.save_index(_random_index(200), path)
    before = path.read_bytes()
    crash = (
        "import sys, os\n"
        "from hybrid_retrieval import index as m, tensorfile\n"
        "def half(tensors, filename, metadata=None):\n"
        "    open(filename, 'wb').write(b'partial')\n"
        "    os._exit(9)  # killed mid-write: no cleanup runs\n"
        "tensorfile.save_file = half\n"
        "m.save_index(m.load_index(sys.argv[1]), sys.argv[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", crash, str(path)], cwd=ROOT, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    assert path.read_bytes() == before and len(load_index(path)) == 200  # the old index, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert leftovers and all(name.startswith(".catalogue.index.") for name in leftovers)  # hidden temp only
    with pytest.raises(NotFoundError, match="no index"):
        load_index(tmp_path / "new.index")  # a crash before the first rename leaves no index to read
    (tmp_path / "truncated.index").write_bytes(before[: len(before) // 2])
    with pytest.raises(BadInputError, match="not a readable index"):
        load_index(tmp_path / "truncated.index")


def test_exact_search_agrees_with_faiss_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    index = _random_index(1000)
    queries = index.embeddings[:7] + 0.1
    monkeypatch.setattr(exact_module, "_EXACT_CHUNK", 128)  # force the chunk merge
    scores_t, rows_t = exact_search(index.embeddings, queries, 10)
    scores_f, rows_f = faiss.knn(queries.numpy(), index.embeddings.numpy(), 10, metric=faiss.METRIC_INNER_PRODUCT)
    scores_f, rows_f = torch.from_numpy(scores_f), torch.from_numpy(rows_f)
    torch.testing.assert_close(scores_t, scores_f, atol=1e-5, rtol=0)
    full = queries @ index.embeddings.T
    torch.testing.assert_close(scores_t, full.topk(10, dim=1).values, atol=1e-5, rtol=0)
    assert recall_at_k(rows_t, rows_f) == 1.0
    assert exact_search(index.embeddings[:3], queries, 10)[1].shape == (7, 3)  # k above the catalogue size


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_index_reaches_its_recall_and_round_trips(kind: str, tmp_path: Path) -> None:
    index = _random_index()
    if kind == "ivfpq":  # codes search, the float16 store re-ranks
        index = index_module.SearchIndex(index.embeddings.half(), index.ids, index.paths, index.metadata, index.info)
    generator = torch.Generator().manual_seed(1)

    def off_catalogue_queries(n: int) -> torch.Tensor:  # near items, but not items (like text queries)
        rows = torch.randint(len(index), (n,), generator=generator)
        return torch.nn.functional.normalize(index.embeddings[rows] + 0.3 * torch.randn(n, 32, generator=generator), dim=1)

    tuning = off_catalogue_queries(500)
    index.use_backend("faiss", kind=kind, target_recall=0.9, queries=tuning, progress=False)
    settings = index.info["search"]
    assert settings["backend"] == "faiss" and settings["recall@10"] >= 0.9 and settings["recall_queries"] == {"count": 500, "kind": "queries given"}
    queries = off_catalogue_queries(300)  # fresh queries of the same kind: the tuned recall holds
    approx = index.search(queries, 10)[1]
    assert recall_at_k(approx, index.search(queries, 10, exact=True)[1]) >= 0.85

    self_tuned = FaissBackend()
    self_tuned.build(index.embeddings, kind=kind, target_recall=0.9, progress=False)
    assert self_tuned.settings["recall_queries"] == {"count": 1000, "kind": "catalogue items"}
    assert self_tuned.settings["recall@10"] >= 0.9

    index_module.save_index(index, tmp_path / "a.index")
    loaded = load_index(tmp_path / "a.index")
    assert loaded.info["search"] == settings and loaded.embeddings.dtype == index.embeddings.dtype
    assert torch.equal(loaded.search(queries, 10)[1], approx)  # the tuned setting travels with the index
    if kind == "ivfpq":  # the loaded store is mapped: its candidates were read from the file, not the mapping
        assert isinstance(loaded.backend._file_rows, FileRows)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_add_and_remove_keep_rows_and_results_right(backend: str) -> None:
    """After removing and adding items, every item's own vector finds that item first, removed items
    are never returned, and exact search equals a fresh index of the same items."""
    full = _random_index(1200)
    first = slice(0, 1000)
    index = index_module.SearchIndex(full.embeddings[first], full.ids[first], full.paths[first],
                                     full.metadata[first], {"size": 1000, "dim": 32})
    if backend == "faiss":
        index.use_backend("faiss", kind="ivf", target_recall=0.9, progress=False)
        assert isinstance(index.backend, FaissBackend)
    removed = [f"item{i}" for i in range(0, 1000, 7)]
    index.remove(removed)
    new = slice(1000, 1200)
    index.add(full.embeddings[new], full.ids[new], full.paths[new], full.metadata[new])
    assert len(index) == 1200 - len(removed) and index.info["size"] == len(index)
    assert not set(removed) & set(index.ids) and index.ids[-1] == "item1199"

    scores, rows = index.search(index.embeddings, 5)
    assert torch.equal(rows[:, 0], torch.arange(len(index)))  # each item is its own nearest neighbour
    keep = [i for i, name in enumerate(full.ids) if name not in set(removed)]
    fresh = exact_search(full.embeddings[keep], index.embeddings[:50], 10)
    torch.testing.assert_close(index.search(index.embeddings[:50], 10, exact=True)[0], fresh[0])
    assert torch.equal(index.search(index.embeddings[:50], 10, exact=True)[1], fresh[1])
    with pytest.raises(BadInputError, match="already holds"):
        index.add(full.embeddings[:1], ["item1"], ["item1"], [""])
    with pytest.raises(BadInputError, match="not in the index"):
        index.remove(["item0"])


def test_index_build_windows_long_clips_and_skips_bad_files(tmp_path: Path, offline_weights: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("mn04_minilm", embed_dim=32).eval()
    checkpoint = _export(model, tmp_path / "model")
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "long.wav", (0.1 * rng.standard_normal(int(SR * 25.3))).astype(np.float32), SR)
    sf.write(folder / "ten.wav", (0.1 * rng.standard_normal(SR * 10)).astype(np.float32), SR)
    sf.write(folder / "one sample.wav", np.array([0.2], dtype=np.float32), SR)
    sf.write(folder / "nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    (folder / "readme.mp3").write_text("not a song\n" * 10)
    rows = {}
    for option, window in ((None, 10.0), ("0", None), ("4", 4.0)):
        out = tmp_path / f"index-{option}.index"
        extra = [] if option is None else ["--window-seconds", option]
        assert main(["index", "build", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0
        assert "indexed 3 items" in capsys.readouterr().out  # nan.wav and readme.mp3 skipped
        index = load_index(out)
        assert sorted(index.ids) == ["long.wav", "one sample.wav", "ten.wav"]
        assert index.info["embedding"]["window_seconds"] == window
        expected = embed_catalogue(model, index.paths, None, window_seconds=window, progress=False)
        torch.testing.assert_close(index.embeddings, expected, atol=1e-6, rtol=0)
        rows[window] = {item: index.embeddings[i] for i, item in enumerate(index.ids)}
    assert (rows[10.0]["long.wav"] - rows[None]["long.wav"]).abs().max() > 1e-3  # the long clip was windowed
    # a 10-s clip is one window, unchanged (up to float rounding: here it shares a batch with the long clip's windows)
    torch.testing.assert_close(rows[10.0]["ten.wav"], rows[None]["ten.wav"], atol=1e-6, rtol=0)
