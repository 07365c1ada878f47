"""The Milvus backend end to end against Milvus Lite (in-process, a folder under the test's tmp
folder, no network): build, search, filter, add, remove and an interrupted update, each compared
with exact search over the same vectors."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_index_updates import brute_force, clustered, make_index

from hybrid_retrieval import index as index_module
from hybrid_retrieval.cli import main
from hybrid_retrieval.embedding import embed_queries
from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.index import load_index
from hybrid_retrieval.index.backends.exact import exact_search
from hybrid_retrieval.index.cli import open_checkpoint

SR = 32_000


def _stored(index: index_module.SearchIndex) -> int:
    """How many vectors the index's Milvus collection holds."""
    collection = index.backend.collection
    return index.backend.client.query(collection, filter="id >= 0", output_fields=["count(*)"])[0]["count(*)"]


def _same_as_exact(index: index_module.SearchIndex, queries: torch.Tensor, k: int = 10) -> None:
    scores, rows = index.search(queries, k)
    truth = exact_search(index.embeddings, queries, k)
    assert torch.equal(rows, truth[1])
    torch.testing.assert_close(scores, truth[0], atol=1e-5, rtol=0)


def test_milvus_search_filter_add_remove_equal_exact_search(tmp_path: Path) -> None:
    names = [f"item_{i}.wav" for i in range(1300)]
    vectors = clustered(1300)
    index = make_index(vectors[:1000], names[:1000])
    index.use_backend("milvus", uri=str(tmp_path / "items.db"), collection="items")
    assert index.info["search"] == {"backend": "milvus", "uri": str((tmp_path / "items.db").resolve()),
                                    "collection": "items", "index_type": "FLAT"}
    queries = clustered(25, seed=3)
    _same_as_exact(index, queries)

    for text, allowed in {"tag=night": lambda r: r % 4 == 0, "tag=rain,description~quiet": lambda r: r % 14 == 0,
                          "name~_1": lambda r: "_1" in names[r]}.items():
        rows = index.search(queries, 10, filter=text)[1]
        assert [[r for r in line if r >= 0] for line in rows.tolist()] == brute_force(index, queries, 10, allowed), text

    removed = names[:1000:7]
    index.remove(removed)
    extra = make_index(vectors[1000:], names[1000:])
    index.add(extra.embeddings, extra.ids, extra.paths, extra.metadata, tags=extra.tags, descriptions=extra.descriptions)
    kept = [i for i, name in enumerate(names) if name not in set(removed)]
    fresh = make_index(vectors[kept], [names[i] for i in kept])
    assert index.ids == fresh.ids and torch.equal(index.embeddings, fresh.embeddings)
    _same_as_exact(index, queries)

    path = index_module.save_index(index, tmp_path / "items.index")
    loaded = load_index(path)
    assert loaded.backend.name == "milvus"
    assert torch.equal(loaded.search(queries, 10, filter="tag=dog")[1], index.search(queries, 10, filter="tag=dog")[1])
    loaded.add(vectors[:1], ["again.wav"], ["/audio/again.wav"], [""])  # the first update deletes the removed
    assert _stored(loaded) == len(kept) + 1
    _same_as_exact(loaded, queries)
    with pytest.raises(BadInputError, match="neither a server"):
        index.use_backend("milvus", uri=str(tmp_path / "items.sqlite"))


def test_an_interrupted_milvus_update_is_never_seen(tmp_path: Path) -> None:
    """Milvus is written before the index file: a process killed in between leaves vectors the
    file does not know (added) or knows as removed; searches skip them, the next update deletes them."""
    names = [f"item_{i}.wav" for i in range(600)]
    vectors = clustered(600)
    index = make_index(vectors[:500], names[:500])
    index.use_backend("milvus", uri=str(tmp_path / "m.db"), collection="c")
    path = index_module.save_index(index, tmp_path / "m.index")

    index.remove(names[:500:2])  # both reach Milvus; the index file is never replaced
    extra = make_index(vectors[500:], names[500:])
    index.add(extra.embeddings, extra.ids, extra.paths, extra.metadata)

    old = load_index(path)
    queries = torch.cat([clustered(10, seed=4), vectors[500:510]])  # the orphans are these queries' best matches
    _same_as_exact(old, queries)
    assert torch.equal(old.search(queries, 10, filter="tag=rain")[1],
                       old.search(queries, 10, filter="tag=rain", exact=True)[1])
    old.remove(["item_1.wav"])  # the next update clears what the interrupted one left
    assert _stored(old) == len(old) + 1 == 500  # item_1.wav goes once this file is saved and loaded again
    _same_as_exact(old, queries)


def test_milvus_index_from_the_command_line(trained_run: Path, tmp_path: Path, offline_weights: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    library = tmp_path / "library"
    library.mkdir()
    t = np.arange(int(SR * 2.0)) / SR
    for name, freq in (("low.wav", 110.0), ("high.wav", 2000.0), ("mid.wav", 600.0), ("higher.wav", 3000.0)):
        sf.write(library / name, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    metadata = tmp_path / "meta.csv"
    metadata.write_text("file_name,keywords\nlow.wav,rain;hum\nhigh.wav,whistle\nhigher.wav,Rain\n")
    out = tmp_path / "lib.index"
    assert main(["index", "build", str(library), "--checkpoint", str(trained_run), "--out", str(out),
                 "--metadata", str(metadata), "--backend", "milvus", "--uri", str(tmp_path / "lib.db")]) == 0
    assert f"Milvus collection lib at {tmp_path / 'lib.db'}, FLAT index (exact)" in capsys.readouterr().out
    index = load_index(out)
    assert index.tags == [["whistle"], ["rain"], ["rain", "hum"], []]  # high, higher, low, mid

    def results(*extra: str) -> list[str]:
        assert main(["search", str(out), "a high whistle sounds", "--json", *extra]) == 0
        return [hit["id"] for hit in json.loads(capsys.readouterr().out)["results"]]

    model, _ = open_checkpoint(str(trained_run), "cpu")
    query = embed_queries(model, ["a high whistle sounds"], progress=False)

    def exact(index: index_module.SearchIndex) -> list[str]:
        return [index.ids[row] for row in exact_search(index.embeddings, query, 10)[1][0].tolist()]

    expected = exact(index)
    assert results() == expected and len(expected) == 4
    assert results("--filter", "tag=rain") == [item for item in expected if item in ("low.wav", "higher.wav")]
    assert results("--filter", "tag=rain,name~low") == ["low.wav"]

    sf.write(library / "new.wav", (0.3 * np.sin(2 * np.pi * 2050 * t)).astype(np.float32), SR)
    assert main(["index", "add", str(out), str(library / "new.wav")]) == 0
    assert main(["index", "remove", str(out), "high.wav"]) == 0
    capsys.readouterr()
    index = load_index(out)
    assert sorted(index.ids) == ["higher.wav", "low.wav", "mid.wav", "new.wav"]
    assert results() == exact(index)

    index.backend.client.drop_collection("lib")
    with pytest.raises(NotFoundError, match="Milvus collection 'lib' is not at"):
        load_index(out)
