"""`hybrid-retrieval embed`: the index's numbers, to .npy + .json, resumable from its parts."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval import embedding
from hybrid_retrieval.cli import main
from hybrid_retrieval.data.catalogue import load_catalogue
from hybrid_retrieval.embedding_files import parts_folder, read_embeddings, sidecar
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.index.search_index import build_index, model_identity
from hybrid_retrieval.models import load_retrieval_model
from hybrid_retrieval.training.checkpoint import find_checkpoint

SR = 32_000


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven clips of several lengths under sub-folders, one longer than a 10-s window."""
    root = tmp_path_factory.mktemp("embed_clips")
    for i in range(7):
        seconds = 12.5 if i == 3 else 1.5 + 0.4 * i
        t = np.arange(int(SR * seconds)) / SR
        path = root / ("a" if i % 2 else "b") / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, (0.3 * np.sin(2 * np.pi * (150 + 220 * i) * t)).astype(np.float32), SR)
    return root


def test_audio_rows_are_the_index_embeddings(trained_run: Path, folder: Path, tmp_path: Path, offline_weights: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "clips.npy"
    assert main(["embed", str(folder), "--checkpoint", str(trained_run), "--out", str(out), "--part-size", "3",
                 "--no-progress"]) == 0
    model, info = load_retrieval_model(str(trained_run))
    assert info["path"] == str(find_checkpoint(trained_run).resolve())
    assert f"embedded 7 files (64-d) with {info['path']} -> {out} (+ clips.json)" in capsys.readouterr().out
    index = build_index(model, load_catalogue(folder), info, window_seconds=10.0, progress=False)
    result = read_embeddings(out)
    assert result.names == index.ids == sorted(index.ids) and result.info["paths"] == index.paths
    torch.testing.assert_close(torch.from_numpy(result.array), index.embeddings, atol=1e-6, rtol=0)
    assert result.info["model"] == model_identity(model) == index.info["model"]
    assert (result.info["kind"], result.info["count"], result.info["dim"]) == ("audio", 7, 64)
    assert result.info["checkpoint"] == info
    assert not parts_folder(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["clips.json", "clips.npy"]
    assert np.load(out, mmap_mode="r").shape == (7, 64)


def test_text_rows_are_the_query_embeddings(trained_run: Path, tmp_path: Path, offline_weights: Path) -> None:
    texts = ["a low hum drones", "a high whistle sounds", "white noise hisses"]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    out = tmp_path / "texts.npy"
    assert main(["embed", "--text", str(source), "--checkpoint", str(trained_run), "--out", str(out),
                 "--part-size", "2", "--no-progress"]) == 0
    model, _ = load_retrieval_model(str(trained_run))
    result = read_embeddings(out)
    assert result.names == texts and result.info["kind"] == "text"
    torch.testing.assert_close(torch.from_numpy(result.array),
                               embedding.embed_queries(model, texts, progress=False), atol=1e-6, rtol=0)


def test_a_killed_run_continues_from_its_parts(trained_run: Path, folder: Path, tmp_path: Path, offline_weights: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "clips.npy"
    argv = ["embed", str(folder), "--checkpoint", str(trained_run), "--out", str(out), "--no-progress"]
    real = embedding.embed_catalogue
    calls: list[int] = []  # files per embedded part

    def run(part_size: int, killed_at: int | None = None) -> int:
        """The command with the catalogue embedding counted, and interrupted at its `killed_at`-th part."""
        calls.clear()

        def counted(model, paths, *args, **kwargs):
            calls.append(len(paths))
            if len(calls) == killed_at:
                raise KeyboardInterrupt
            return real(model, paths, *args, **kwargs)

        monkeypatch.setattr(embedding, "embed_catalogue", counted)
        return main([*argv, "--part-size", str(part_size)])

    with pytest.raises(KeyboardInterrupt):
        run(2, killed_at=3)
    parts = parts_folder(out)
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-000000.npy", "part-000001.npy"]
    assert not out.exists() and not sidecar(out).exists()
    assert run(2) == 0
    assert calls == [2, 1]  # parts 3 and 4 (of 2, 2, 2, 1 files); the first two were kept
    resumed = read_embeddings(out).array
    assert main(["embed", str(folder), "--checkpoint", str(trained_run), "--out", str(tmp_path / "whole.npy"),
                 "--no-progress"]) == 0
    np.testing.assert_allclose(resumed, read_embeddings(tmp_path / "whole.npy").array, atol=1e-6, rtol=0)

    with pytest.raises(KeyboardInterrupt):  # a damaged part is embedded again
        run(2, killed_at=3)
    (parts / "part-000001.npy").write_bytes(b"\x93NUMPY cut")
    assert run(2) == 0
    assert calls == [2, 2, 1] and "part-000001.npy cannot be read" in caplog.text

    with pytest.raises(KeyboardInterrupt):  # parts of another run (another part size) are not reused
        run(2, killed_at=3)
    assert run(3) == 0
    assert calls == [3, 3, 1] and "holds parts of another run" in caplog.text
    np.testing.assert_allclose(read_embeddings(out).array, resumed, atol=1e-6, rtol=0)


def test_a_header_that_disagrees_is_refused(trained_run: Path, tmp_path: Path, offline_weights: Path) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("one\ntwo\n")
    out = tmp_path / "t.npy"
    assert main(["embed", "--text", str(source), "--checkpoint", str(trained_run), "--out", str(out),
                 "--no-progress"]) == 0
    header = json.loads(sidecar(out).read_text())
    sidecar(out).write_text(json.dumps({**header, "names": ["one"]}))
    with pytest.raises(BadInputError, match=f"{out} holds a \\(2, 64\\) array but its header"):
        read_embeddings(out)
    sidecar(out).write_text(json.dumps({**header, "format": "other"}))
    with pytest.raises(BadInputError, match="is not the header of hybrid_retrieval embeddings"):
        read_embeddings(out)
