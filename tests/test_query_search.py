"""Searching an index: a text query needs (and checks) only the query half of the model, and a
cold search runs a cached ONNX export of it; query by example ranks the catalogue by a clip."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval.cli import main
from hybrid_retrieval.embedding import embed_catalogue
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.index import load_index, save_index
from hybrid_retrieval.index.query_encoder import (
    OnnxQueryEncoder,
    cached_encoder,
    encoder_folder,
    export_query_encoder,
    open_query_encoder,
)
from hybrid_retrieval.model import create_model
from hybrid_retrieval.query_model import QueryModel
from hybrid_retrieval.training.checkpoint import (
    TrainingState,
    checkpoint_query_identity,
    load_query_model,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000
QUERIES = ["a low hum drones", "a high whistle sounds", "white noise hisses"]
LONG_QUERY = " ".join(f"word{i}" for i in range(60))


def _clip(seconds: float, rate: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if kind == "noise":
        return 0.3 * rng.standard_normal(len(t))
    if kind == "chirp":
        return 0.3 * np.sin(2 * np.pi * (200 * t + 450 * t ** 2))
    return 0.3 * np.sin(2 * np.pi * float(kind) * t)


KINDS = ("110", "440", "1500", "4000", "noise", "chirp")


@dataclass
class World:
    clips: Path  # six distinct clips
    copies: Path  # each clip altered (44.1 kHz, quieter, a little noise), outside the catalogue
    model: object  # the content-only model of `checkpoint` (heads at random, towers pretrained and frozen)
    checkpoint: Path
    same_text: Path  # the same query half, another item encoder
    tuned_text: Path  # a fine-tuned text tower (its weights in the file), another query half
    tuned_model: object
    index: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, weights_dir: Path) -> World:
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(0)
    clips, copies = root / "clips", root / "copies"
    clips.mkdir()
    copies.mkdir()
    for kind in KINDS:
        sf.write(clips / f"{kind}.wav", _clip(3.0, SR, kind, rng).astype(np.float32), SR)
        altered = 0.7 * _clip(3.0, 44_100, kind, rng) + 0.003 * rng.standard_normal(3 * 44_100)
        sf.write(copies / f"{kind}.wav", altered.astype(np.float32), 44_100)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        patch.setenv("HYBRID_RETRIEVAL_CACHE", str(root / "cache"))
        torch.manual_seed(0)
        model = create_model("mn04_minilm", embed_dim=64).eval()
        checkpoint = save_checkpoint(root / "a", model, {"audio_pretrained": True}, TrainingState(1, 1),
                                     frozen=("audio", "text"))
        torch.manual_seed(1)
        other = create_model("mn04_minilm", embed_dim=64).eval()
        other.text_proj.load_state_dict(model.text_proj.state_dict())
        same_text = save_checkpoint(root / "b", other, {"audio_pretrained": True}, TrainingState(1, 1),
                                    frozen=("audio", "text"))
        with torch.no_grad():
            other.text_tower.model.embeddings.word_embeddings.weight.mul_(1.01)
        tuned_text = save_checkpoint(root / "c", other, {"audio_pretrained": True}, TrainingState(1, 1),
                                     frozen=("audio",))
        assert main(["index", "build", str(clips), "--checkpoint", str(checkpoint), "--out", str(root / "a.index")]) == 0
    return World(clips, copies, model, checkpoint, same_text, tuned_text, other, root / "a.index")


@pytest.fixture()
def cache(world: World, monkeypatch: pytest.MonkeyPatch, weights_dir: Path, tmp_path: Path) -> Path:
    """A cache of query encoders shared by this module's tests (they are keyed by the query
    model's identity, so sharing is what a user's cache does)."""
    folder = world.index.parent / "cache"
    monkeypatch.setenv("HYBRID_RETRIEVAL_CACHE", str(folder))
    monkeypatch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
    return folder


def _search(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[dict], str]:
    status = main(["search", *argv, "--json"])
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_query_identity_is_read_from_the_checkpoints_files(world: World, cache: Path) -> None:
    """checkpoint_query_identity (config.json and the projection's tensors) equals the identity of
    the model itself and the one the index recorded; a fine-tuned text tower is hashed from the
    file. load_query_model gives the model's own query embeddings without an audio tower."""
    index = load_index(world.index)
    assert checkpoint_query_identity(world.checkpoint) == QueryModel.of(world.model).identity() == index.query_identity
    assert checkpoint_query_identity(world.same_text) == index.query_identity
    tuned = checkpoint_query_identity(world.tuned_text)
    assert tuned == QueryModel.of(world.tuned_model).identity()
    assert tuned["text_state"] != index.query_identity["text_state"] and tuned["projection"] == \
        index.query_identity["projection"]
    for path, model in ((world.checkpoint, world.model), (world.tuned_text, world.tuned_model)):
        query_model, _ = load_query_model(path)
        assert not hasattr(query_model, "audio_tower")
        with torch.inference_mode():
            torch.testing.assert_close(query_model.encode(QUERIES), model.encode_text(QUERIES), rtol=0, atol=1e-6)


def test_the_onnx_export_embeds_and_cuts_queries_as_the_text_tower(world: World, cache: Path) -> None:
    model = QueryModel.of(world.model)
    identity = model.identity()
    folder = export_query_encoder(model, identity)
    assert folder == encoder_folder(identity)
    encoder = OnnxQueryEncoder(folder)
    texts = [*QUERIES, "Café — naïve FAÇADE!! rain…", "x", LONG_QUERY]
    torch.testing.assert_close(encoder.encode(texts), model.encode(texts), rtol=0, atol=1e-5)
    assert encoder.truncation(LONG_QUERY) == model.truncation(LONG_QUERY) is not None
    assert encoder.truncation("a dog barks") is None


def test_a_cold_text_search_loads_the_query_half_only(world: World, cache: Path, capsys: pytest.CaptureFixture) -> None:
    """The first search builds the text tower and caches its export; a new process then answers
    from the export: no transformers, no audio tower, no weights hash beyond the projection's.
    Both answer what the whole model ranks."""
    import shutil

    shutil.rmtree(cache / "query_encoders", ignore_errors=True)
    status, first, _ = _search([str(world.index), *QUERIES, "--top", "6"], capsys)
    assert status == 0 and cached_encoder(load_index(world.index).query_identity) is not None
    index = load_index(world.index)
    with torch.inference_mode():
        scores = world.model.encode_text(QUERIES) @ index.embeddings.T
    for line, row in zip(first, scores):
        assert [hit["id"] for hit in line["results"]] == [index.ids[i] for i in row.argsort(descending=True)]
        assert [hit["score"] for hit in line["results"]] == pytest.approx(row.sort(descending=True).values.tolist(),
                                                                          abs=1e-4)
    code = (
        "import sys, json\n"
        "import hybrid_retrieval.fingerprint as f\n"
        "hashed = []\n"
        "original = f.state_hash\n"
        "def counting(tensors):\n"
        "    hashed.append(sum(t.numel() * t.element_size() for t in tensors.values()))\n"
        "    return original(tensors)\n"
        "f.state_hash = counting\n"
        "from hybrid_retrieval.cli import main\n"
        f"status = main(['search', {str(world.index)!r}, *{QUERIES!r}, '--top', '6', '--json'])\n"
        "print(json.dumps({'status': status, 'hashed': sum(hashed), 'modules': sorted(m for m in sys.modules if m in "
        "('transformers', 'hybrid_retrieval.audio.efficientat', 'timm'))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    *answers, summary = result.stdout.splitlines()
    summary = json.loads(summary)
    assert summary["status"] == 0 and summary["modules"] == []
    assert 0 < summary["hashed"] < 64 * 384 * 4 * 2  # the query projection's weights, nothing more
    cold = [json.loads(line) for line in answers]
    for a, b in zip(cold, first):
        assert [hit["id"] for hit in a["results"]] == [hit["id"] for hit in b["results"]]
        assert [hit["score"] for hit in a["results"]] == pytest.approx([hit["score"] for hit in b["results"]],
                                                                       abs=2e-4)


def test_a_damaged_cached_export_is_removed_and_made_again(world: World, cache: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    index = load_index(world.index)
    folder = export_query_encoder(QueryModel.of(world.model), index.query_identity)
    (folder / "encoder.onnx").write_bytes(b"not a graph")
    encoder = open_query_encoder(index)
    assert isinstance(encoder, QueryModel)  # answered by the text tower ...
    assert "cannot be used" in caplog.text and str(folder) in caplog.text
    assert isinstance(open_query_encoder(index), OnnxQueryEncoder)  # ... which exported itself again


def test_a_text_search_checks_the_query_half_and_a_clip_the_whole_model(world: World, cache: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    status, expected, _ = _search([str(world.index), *QUERIES], capsys)
    assert status == 0
    status, same, _ = _search([str(world.index), *QUERIES, "--checkpoint", str(world.same_text)], capsys)
    assert status == 0 and same == expected  # another item encoder: the queries are the same
    status, _, err = _search([str(world.index), "--audio", str(world.copies / "440.wav"), "--checkpoint",
                              str(world.same_text)], capsys)
    assert status == 2 and "projection/fusion weights" in err and "built with checkpoint" in err
    status, _, err = _search([str(world.index), *QUERIES, "--checkpoint", str(world.tuned_text)], capsys)
    assert status == 2 and "differs in its text tower" in err and "query identity sha256" in err


def test_an_index_without_a_query_identity_is_checked_whole(world: World, cache: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Indexes written before the query half was recorded held a hash of the whole state dict."""
    old = load_index(world.index)
    del old.info["model"]["parts"]
    old.info["model"]["weights"] = module_state_hash(world.model)
    save_index(old, tmp_path / "old.index")
    status, answers, _ = _search([str(tmp_path / "old.index"), *QUERIES], capsys)
    status_new, expected, _ = _search([str(world.index), *QUERIES], capsys)
    assert status == status_new == 0
    for a, b in zip(answers, expected):
        assert [hit["id"] for hit in a["results"]] == [hit["id"] for hit in b["results"]]
    status, _, err = _search([str(tmp_path / "old.index"), *QUERIES, "--checkpoint", str(world.same_text)], capsys)
    assert status == 2 and "projection/fusion weights" in err  # the whole model must match


def test_query_by_example_finds_the_altered_clip_and_never_the_clip_itself(world: World, cache: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    index = load_index(world.index)
    index.check_model(world.model)
    for kind in KINDS:
        scores, rows = index.search_audio(world.model, world.copies / f"{kind}.wav", k=3)
        assert index.ids[rows[0]] == f"{kind}.wav" and len(rows) == 3
        assert torch.all(scores[:-1] >= scores[1:])
        scores, rows = index.search_audio(world.model, world.clips / f"{kind}.wav", k=10)
        assert f"{kind}.wav" not in [index.ids[r] for r in rows] and len(rows) == len(KINDS) - 1
    wave = sf.read(world.clips / "440.wav", dtype="float32")[0]
    scores, rows = index.search_audio(world.model, wave, k=1)  # a waveform has no path: nothing is left out
    assert index.ids[rows[0]] == "440.wav" and scores[0] == pytest.approx(1.0, abs=1e-5)

    status, answers, _ = _search([str(world.index), "--audio", str(world.copies / "chirp.wav"),
                                  "--audio", str(world.clips / "noise.wav"), "--top", "2"], capsys)
    assert status == 0 and [a["audio"] for a in answers] == [str(world.copies / "chirp.wav"),
                                                           str(world.clips / "noise.wav")]
    assert answers[0]["results"][0]["id"] == "chirp.wav"
    assert "noise.wav" not in [hit["id"] for hit in answers[1]["results"]] and len(answers[1]["results"]) == 2


def test_a_hybrid_models_example_clip_is_an_item_without_metadata(world: World, cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    late = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=32).eval()
    paths = [str(p.resolve()) for p in sorted(world.clips.iterdir())]
    embeddings = embed_catalogue(late, paths, ["tone, hum"] * len(paths), progress=False)
    from hybrid_retrieval.index import SearchIndex

    index = SearchIndex(embeddings, [Path(p).name for p in paths], paths, ["tone, hum"] * len(paths),
                        {"size": len(paths), "dim": 32, "embedding": {"window_seconds": 10.0}})
    query = world.copies / "4000.wav"
    scores, rows = index.search_audio(late, query, k=len(paths))
    audio_only = embed_catalogue(late, [query], [""], window_seconds=10.0, progress=False)
    torch.testing.assert_close(scores, (audio_only @ embeddings.T)[0, rows], rtol=0, atol=1e-5)
    with pytest.raises(BadInputError, match="metadata alone"):
        index.search_audio(create_model("mn04_minilm", fusion="metadata", metadata="os", embed_dim=32), query)


def test_a_whole_model_the_caller_holds_is_not_loaded_again(world: World, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the whole model is needed (here an index without a query identity), a model the caller
    has loaded and checked (the search service's) gives the query half; nothing is loaded."""
    old = load_index(world.index)
    del old.info["model"]["parts"]
    old.info["model"]["weights"] = module_state_hash(world.model)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr("hybrid_retrieval.models.load_retrieval_model", refuse)
    encoder = open_query_encoder(old, world.checkpoint, "cpu", model=world.model)
    assert isinstance(encoder, QueryModel) and encoder.text_tower is world.model.text_tower
    with pytest.raises(AssertionError, match="loaded again"):
        open_query_encoder(old, world.checkpoint, "cpu")
