"""Indexes that fit and change: memory-mapped stores, add/remove round trips against fresh builds,
filtered search against a brute-force reference, and `index add` / `index remove`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from hybrid_retrieval import index as index_module
from hybrid_retrieval.cli import main
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index import load_index
from hybrid_retrieval.index import store as store_module
from hybrid_retrieval.index.backends import exact as exact_module
from hybrid_retrieval.index.filters import ItemFilter, ItemRecord
from hybrid_retrieval.tensorfile import mapped_tensors

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000
TAGS = ("rain", "dog", "night")


def clustered(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Unit vectors near 40 random directions (clustered, like learned embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, dim, generator=generator)
    x = centres[torch.randint(40, (n,), generator=generator)] + 0.5 * torch.randn(n, dim, generator=generator)
    return torch.nn.functional.normalize(x, dim=1)


def make_index(vectors: torch.Tensor, names: list[str]) -> index_module.SearchIndex:
    """An exact index of `vectors`; item i is tagged TAGS[j] for every j with i % (j + 2) == 0,
    and described "quiet" when i % 7 == 0."""
    rows = [int(name.split("_")[1].split(".")[0]) for name in names]
    return index_module.SearchIndex(
        vectors, list(names), [f"/audio/{name}" for name in names], [""] * len(names),
        {"size": len(names), "dim": vectors.shape[1]},
        tags=[[tag for j, tag in enumerate(TAGS) if row % (j + 2) == 0] for row in rows],
        descriptions=["quiet" if row % 7 == 0 else "" for row in rows])


def brute_force(index: index_module.SearchIndex, queries: torch.Tensor, k: int, allowed=lambda row: True):
    """The reference: every score written out, non-matching items dropped, sorted, the first k."""
    full = queries.float() @ index.embeddings.float().T
    out = []
    for line in full:
        ranked = sorted((row for row in range(len(index)) if allowed(row)), key=lambda r: -float(line[r]))
        out.append(ranked[:k])
    return out


def _maps_file(tensor: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's memory lies in a mapping of `path` (Linux /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return len(fields) >= 6 and fields[5] == str(path)
    return False


# ------------------------------------------------------------------------------------------------
# memory-mapped stores


def test_mapped_tensors_equal_what_safetensors_reads(tmp_path: Path) -> None:
    tensors = {"f32": torch.randn(5, 3), "f16": torch.randn(4, 6).half(), "u8": torch.arange(7, dtype=torch.uint8),
               "i64": torch.arange(-3, 3), "empty": torch.zeros(0, 4)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"header": "{}"})
    reference = load_file(str(path))
    mapped = mapped_tensors(path, list(tensors))
    for name, tensor in reference.items():
        assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name
    assert _maps_file(mapped["f32"], path.resolve())
    mapped["f32"][0, 0] = 99.0  # copy-on-write: the file keeps its value
    assert load_file(str(path))["f32"][0, 0] == reference["f32"][0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_loaded_index_maps_its_store_and_exact_search_reads_it_in_chunks(
        dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"item_{i}.wav" for i in range(700)]
    index = make_index(clustered(700).to(dtype), names)
    path = index_module.save_index(index, tmp_path / "a.index")
    loaded = load_index(path)
    assert loaded.embeddings.dtype == dtype and torch.equal(loaded.embeddings, index.embeddings)
    assert _maps_file(loaded.embeddings, path.resolve())  # mapped, not read into memory
    queries = clustered(9, seed=5)
    monkeypatch.setattr(exact_module, "_EXACT_CHUNK", 64)  # eleven chunks
    scores, rows = loaded.search(queries, 10)
    assert rows.tolist() == brute_force(loaded, queries, 10)
    reference = queries @ index.embeddings.float().T  # float16 store: scored in float32
    torch.testing.assert_close(scores, reference.gather(1, rows), atol=1e-6, rtol=0)


def test_a_store_too_large_to_scan_is_checked_as_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"item_{i}.wav" for i in range(300)]
    vectors = clustered(300)
    vectors[123] = float("nan")
    path = index_module.save_index(make_index(vectors, names), tmp_path / "nan.index")
    with pytest.raises(BadInputError, match="1 of its embeddings hold NaN.*item_123.wav"):
        load_index(path)
    monkeypatch.setattr(store_module, "SCAN_BYTES", 1000)  # this store counts as large: not scanned at load
    loaded = load_index(path)
    monkeypatch.setattr(exact_module, "_EXACT_CHUNK", 100)
    with pytest.raises(BadInputError, match="embedding of row 123 holds NaN"):
        loaded.search(clustered(2, seed=1), 5)


# ------------------------------------------------------------------------------------------------
# add / remove: equal to a fresh build of the same items


def _exhaustive(index: index_module.SearchIndex) -> None:
    """Probe every cell (and re-rank every candidate): an IVF index then searches exactly."""
    backend = index.backend
    cells = faiss.extract_index_ivf(backend.index).nlist
    backend.use_setting([cells, len(index)] if backend.kind == "ivfpq" else cells)


def _cells(index: index_module.SearchIndex) -> np.ndarray:
    quantizer = faiss.extract_index_ivf(index.backend.index).quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)


@pytest.mark.parametrize("backend", ["torch", "ivf", "ivfpq", "hnsw"])
def test_add_and_remove_equal_a_fresh_build(backend: str) -> None:
    vectors, names = clustered(1500), [f"item_{i}.wav" for i in range(1500)]
    index = make_index(vectors[:1200], names[:1200])
    if backend != "torch":
        if backend == "ivfpq":
            index = make_index(vectors[:1200].half(), names[:1200])
        index.use_backend("faiss", kind=backend, target_recall=0.9, progress=False)
    trained = _cells(index) if backend in ("ivf", "ivfpq") else None
    removed = names[:1200:9] + [names[1199]]
    index.remove(removed)
    extra = make_index(vectors[1200:], names[1200:])
    index.add(extra.embeddings, extra.ids, extra.paths, extra.metadata, tags=extra.tags, descriptions=extra.descriptions)
    settings = index.retune()
    kept = [i for i, name in enumerate(names) if name not in set(removed)]
    fresh = make_index(vectors[kept].to(index.embeddings.dtype), [names[i] for i in kept])
    assert (index.ids, index.paths, index.tags, index.descriptions) == (fresh.ids, fresh.paths, fresh.tags,
                                                                        fresh.descriptions)
    assert torch.equal(index.embeddings, fresh.embeddings)

    queries = clustered(40, seed=3)
    truth = fresh.search(queries, 10)
    if backend in ("ivf", "ivfpq"):  # updated, not rebuilt: the trained cells are the same
        assert np.array_equal(trained, _cells(index))
        assert index.backend.index.ntotal == len(kept)
        assert settings["recall@10"] >= 0.9
        _exhaustive(index)
    if backend == "hnsw":  # rebuilt without the removed items; approximate, so compared by recall
        assert index.backend.index.ntotal == len(kept) and settings["recall@10"] >= 0.9
        rows = index.search(queries, 10)[1]
        assert not set(rows.flatten().tolist()) - set(range(len(kept)))
        return
    scores, rows = index.search(queries, 10)
    assert torch.equal(rows, truth[1])
    torch.testing.assert_close(scores, truth[0], atol=1e-5, rtol=0)
    with pytest.raises(BadInputError, match="empty index"):
        index.remove(index.ids)


# ------------------------------------------------------------------------------------------------
# filters


def test_filter_syntax() -> None:
    item = ItemRecord("x/dog_bark.wav", ("rain", "night"), "a dog barks at night")
    assert ItemFilter.parse("tag=RAIN").matches(item)
    assert ItemFilter.parse("tag=rain, name~dog_").matches(item)
    assert not ItemFilter.parse("tag=rain,tag=dog").matches(item)
    assert ItemFilter.parse("name=x/dog_bark.wav").matches(item) and not ItemFilter.parse("name=dog_bark.wav").matches(item)
    assert ItemFilter.parse("description~barks at").matches(item)
    assert not ItemFilter.parse("description~Barks").matches(item)  # contains is case-sensitive
    assert ItemFilter.parse('tag=rain,name~"a"').milvus_expression() == \
        '(array_contains(tags, "rain")) and (name like "%\\"a\\"%")'
    for bad, named in (("rain", "not FIELD=VALUE"), ("colour=red", "not FIELD=VALUE"), ("tag~ra", "tag takes ="),
                       ("tag=", "not FIELD=VALUE"), ("description=x", "description takes ~"), ("", "not")):
        with pytest.raises(BadInputError, match=named):
            ItemFilter.parse(bad)


@pytest.mark.parametrize("backend", ["torch", "ivf", "ivfpq"])
def test_filtered_search_equals_brute_force(backend: str) -> None:
    """Post-filtering widens until k match: a rare tag (one item in 40) still gets all k."""
    names = [f"item_{i}.wav" for i in range(2000)]
    index = make_index(clustered(2000), names)
    index.tags = [["rare"] if i % 40 == 0 else tags for i, tags in enumerate(index.tags)]
    if backend != "torch":
        index.use_backend("faiss", kind=backend, target_recall=0.9, progress=False)
        _exhaustive(index)
    queries = clustered(12, seed=7)
    cases = {"tag=rare": lambda r: r % 40 == 0, "tag=rain,tag=dog": lambda r: r % 6 == 0 and r % 40,
             "description~qui,name~_1": lambda r: r % 7 == 0 and "_1" in names[r], "name=item_7.wav": lambda r: r == 7}
    for text, allowed in cases.items():
        scores, rows = index.search(queries, 10, filter=text)
        expected = brute_force(index, queries, 10, allowed)
        assert [[r for r in line if r >= 0] for line in rows.tolist()] == expected, text
        assert all(len(line) == 10 for line in expected[:1]) or text == "name=item_7.wav"
    assert index.search(queries, 10, filter="tag=nothing")[1].eq(-1).all()


# ------------------------------------------------------------------------------------------------
# the commands


def _clip(path: Path, freq: float) -> Path:
    t = np.arange(int(SR * 2.0)) / SR
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def test_index_add_and_remove_commands_equal_a_fresh_build(trained_run: Path, tmp_path: Path, offline_weights: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    library = tmp_path / "library"
    for name, freq in (("low.wav", 110.0), ("high.wav", 2000.0), ("mid.wav", 600.0)):
        _clip(library / name, freq)
    out = tmp_path / "lib.index"
    assert main(["index", "build", str(library), "--checkpoint", str(trained_run), "--out", str(out),
                 "--approximate", "ivf"]) == 0
    capsys.readouterr()
    new = [_clip(library / "new" / "whistle.wav", 2100.0), _clip(tmp_path / "elsewhere" / "hum.wav", 120.0)]
    assert main(["index", "add", str(out), str(library / "new"), str(new[1])]) == 0
    printed = capsys.readouterr().out
    assert "added 2 items" in printed and "(5 now)" in printed and "recall@10" in printed
    updated = load_index(out)
    assert updated.ids == ["high.wav", "low.wav", "mid.wav", "new/whistle.wav", "hum.wav"]  # inside the folder: its path

    everything = tmp_path / "everything"
    for item, path in zip(updated.ids, updated.paths):
        (everything / item).parent.mkdir(parents=True, exist_ok=True)
        (everything / item).symlink_to(path)
    fresh_out = tmp_path / "fresh.index"
    assert main(["index", "build", str(everything), "--checkpoint", str(trained_run), "--out", str(fresh_out)]) == 0
    fresh = load_index(fresh_out)
    order = [fresh.ids.index(item) for item in updated.ids]
    torch.testing.assert_close(updated.embeddings, fresh.embeddings[order], atol=1e-5, rtol=0)

    assert main(["index", "remove", str(out), "low.wav", "hum.wav"]) == 0
    assert "removed 2 items" in capsys.readouterr().out
    assert main(["search", str(out), "a high whistle sounds", "--json", "--top", "5"]) == 0
    hits = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert [hit["id"] for hit in hits][:1] in (["high.wav"], ["new/whistle.wav"])
    assert {hit["id"] for hit in hits} == {"high.wav", "mid.wav", "new/whistle.wav"}

    assert main(["index", "remove", str(out), "nothing.wav"]) == 2
    assert "not in the index: ['nothing.wav']" in capsys.readouterr().err


def test_index_add_refuses_another_checkpoint_and_leaves_the_file(trained_run: Path, tmp_path: Path,
                                                                  offline_weights: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

    out = tmp_path / "one.index"
    assert main(["index", "build", str(_clip(tmp_path / "a" / "low.wav", 110.0).parent), "--checkpoint",
                 str(trained_run), "--out", str(out)]) == 0
    before = out.read_bytes()
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other", create_model("mn04_minilm", embed_dim=64).eval(),
                            {"audio_pretrained": True}, TrainingState(1, 1), frozen=("audio", "text"))
    capsys.readouterr()
    assert main(["index", "add", str(out), str(_clip(tmp_path / "b.wav", 900.0)), "--checkpoint", str(other)]) == 2
    assert "built with checkpoint" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_a_killed_add_leaves_the_old_index(trained_run: Path, tmp_path: Path, offline_weights: Path) -> None:
    out = tmp_path / "one.index"
    assert main(["index", "build", str(_clip(tmp_path / "a" / "low.wav", 110.0).parent), "--checkpoint",
                 str(trained_run), "--out", str(out)]) == 0
    before = out.read_bytes()
    crash = (
        "import os, sys\n"
        "from hybrid_retrieval import tensorfile\n"
        "from hybrid_retrieval.cli import main\n"
        "def half(tensors, filename, metadata=None):\n"
        "    open(filename, 'wb').write(b'partial')\n"
        "    os._exit(9)\n"
        "tensorfile.save_file = half\n"
        "main(['index', 'add', sys.argv[1], sys.argv[2]])\n"
    )
    result = subprocess.run([sys.executable, "-c", crash, str(out), str(_clip(tmp_path / "b.wav", 900.0))],
                            cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    assert out.read_bytes() == before and len(load_index(out)) == 1


def test_index_info_prints_the_ivfpq_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = [f"item_{i}.wav" for i in range(1200)]
    index = make_index(clustered(1200).half(), names)
    index.info.update(created="today", source="generated", checkpoint={"path": "nowhere"},
                      model={"fingerprint": {}, "weights": "0" * 64, "config": {}},
                      embedding={"metadata_kinds": ""})
    index.use_backend("faiss", kind="ivfpq", target_recall=0.9, progress=False)
    path = index_module.save_index(index, tmp_path / "pq.index")
    assert main(["index", "info", str(path)]) == 0
    nprobe, rerank = index.info["search"]["value"]
    assert (f"approximate: {index.info['search']['factory']} with nprobe={nprobe}, re-ranking {rerank}k candidates: "
            f"recall@10 {index.info['search']['recall@10']:.3f}") in capsys.readouterr().out
    # min(round(sqrt(1200)), 1200 // 39) cells (39 training vectors a cell at least), 8 dimensions a 4-bit code
    assert index.info["search"]["factory"] == "IVF30,PQ4x4fs"
