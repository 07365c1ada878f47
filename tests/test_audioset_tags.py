"""The training-free `audioset_tags` model: its formula written out independently, and every surface
that takes a checkpoint (index build, search, classify, eval_map10) taking it by name."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hybrid_retrieval.audio.io import load_audio
from hybrid_retrieval.audio.tower import audioset_labels
from hybrid_retrieval.cli import main
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError
from hybrid_retrieval.index import load_index
from hybrid_retrieval.model import create_model
from hybrid_retrieval.models import load_retrieval_model

ROOT = Path(__file__).resolve().parents[1]
SR = 32_000


@pytest.fixture(scope="module")
def tags_model(weights_dir: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_RETRIEVAL_WEIGHTS_DIR", str(weights_dir))
        model, info = load_retrieval_model("audioset_tags")
    assert info == {"path": "audioset_tags", "epoch": None, "step": None}
    return model


@pytest.fixture(scope="module")
def label_vectors(text_tower) -> torch.Tensor:
    """e_l: the MiniLM embedding of each AudioSet label name, normalised; names of one length in word
    pieces run together, so no name is padded (as if each ran alone)."""
    names = audioset_labels()
    by_length: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        by_length.setdefault(text_tower.tokenize([name])["input_ids"].shape[1], []).append(i)
    vectors = torch.zeros(len(names), text_tower.embed_dim, dtype=torch.float64)
    with torch.inference_mode():
        for rows in by_length.values():
            pooled = text_tower([names[i] for i in rows]).embedding
            vectors[rows] = torch.nn.functional.normalize(pooled, dim=1).double()
    return vectors


def _by_hand(mn04, text_tower, labels: torch.Tensor, wave: np.ndarray,
             query: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(item, query embedding, score) of the module docstring's formula from the towers themselves:
    p = sigmoid(logits), the mixture sum_l p_l e_l, and the score as a sum over the labels."""
    with torch.inference_mode():
        p = torch.sigmoid(mn04.eval()(torch.from_numpy(wave)[None]).logits[0]).double()
        t = text_tower([query]).embedding[0].double()
    mixture = sum(p[i] * labels[i] for i in range(len(labels)))
    cosines = torch.stack([torch.dot(t, labels[i]) / t.norm() for i in range(len(labels))])
    score = float((p * cosines).sum() / mixture.norm())  # sum_l p_l cos(t, e_l) / ||sum_l p_l e_l||
    return mixture / mixture.norm(), t / t.norm(), score


def test_embeddings_and_score_follow_the_formula(tags_model, mn04, text_tower, label_vectors,
                                                  shared: Path) -> None:
    config = tags_model.config
    assert (config.fusion, config.projection, config.embed_dim) == ("audioset_tags", "identity", 384)
    assert tags_model.cache_is_valid and not any(p.requires_grad for p in tags_model.parameters())
    wave = load_audio(shared / "audio" / "music.wav")[: 10 * SR]
    item, query, score = _by_hand(mn04, text_tower, label_vectors, wave, "a piano plays a calm melody")
    with torch.inference_mode():
        got_item = tags_model.encode_items(torch.from_numpy(wave)[None])[0]
        got_query = tags_model.encode_text(["a piano plays a calm melody"])[0]
    torch.testing.assert_close(got_item.double(), item, atol=2e-5, rtol=0)
    torch.testing.assert_close(got_query.double(), query, atol=2e-6, rtol=0)
    assert abs(float(got_item @ got_query) - score) < 2e-5


def test_it_tells_music_from_a_station(tags_model, shared: Path) -> None:
    clips = [load_audio(shared / "audio" / name)[: 10 * SR] for name in ("music.wav", "metro_station-paris.wav")]
    waves = torch.stack([torch.from_numpy(c) for c in clips])
    scores = tags_model.classify(waves, ["music", "a train in a station"], prompt="the sound of {}")
    assert scores.argmax(1).tolist() == [0, 1]
    with torch.inference_mode():
        items = tags_model.encode_items(waves)
        queries = tags_model.encode_text(["a song with guitar", "a subway train arrives"])
    assert (queries @ items.T).argmax(1).tolist() == [0, 1]  # text -> audio, the index's score


def test_class_embeddings_need_the_tagging_head(offline_weights: Path) -> None:
    with pytest.raises(BadInputError, match="embed_dim=384"):
        create_model("audioset_tags", embed_dim=64)
    model = create_model("audioset_tags")
    from hybrid_retrieval.outputs import TowerOutput

    no_logits = TowerOutput(torch.zeros(1, 1, 960), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 960))
    with pytest.raises(BadInputError, match="527 AudioSet logits"):
        model.embed_items(no_logits)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tag_clips")
    t = np.arange(int(SR * 3.0)) / SR
    waves = {"hum.wav": np.sin(2 * np.pi * 100 * t), "noise.wav": np.random.default_rng(2).standard_normal(len(t)),
             "beep.flac": np.sin(2 * np.pi * 1000 * t) * (np.sin(2 * np.pi * 2 * t) > 0)}
    for name, wave in waves.items():
        sf.write(folder / name, (0.3 * wave).astype(np.float32), SR)
    return folder


def test_index_build_and_search_by_name(tags_model, mn04, text_tower, label_vectors, clips: Path, tmp_path: Path,
                                        offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tags.index"
    assert main(["index", "build", str(clips), "--checkpoint", "audioset_tags", "--out", str(out)]) == 0
    assert "indexed 3 items (384-d)" in capsys.readouterr().out
    index = load_index(out)
    assert index.checkpoint == "audioset_tags"
    query = "white noise hisses"
    expected = {}
    for row, path in enumerate(index.paths):
        item, _, score = _by_hand(mn04, text_tower, label_vectors, load_audio(path), query)
        torch.testing.assert_close(index.embeddings[row].double(), item, atol=2e-5, rtol=0)
        expected[index.ids[row]] = score
    assert main(["search", str(out), query, "--json", "--top", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert [hit["id"] for hit in hits] == sorted(expected, key=lambda name: -expected[name])
    assert all(abs(hit["score"] - expected[hit["id"]]) < 1e-4 for hit in hits)
    index.check_model(tags_model)  # the model check works for it like for any checkpoint
    other = create_model("audioset_tags", text_max_length=16).freeze(audio=True, text=True)
    with pytest.raises(IncompatibleModelError, match="differs in its architecture"):
        index.check_model(other)


def test_classify_and_eval_map10_take_it(tags_model, clips: Path, tone_dataset: Path, offline_weights: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["classify", str(clips / "noise.wav"), "--checkpoint", "audioset_tags",
                 "--labels", "white noise,music,speech", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    with torch.inference_mode():
        wave = torch.from_numpy(load_audio(clips / "noise.wav"))
        expected = tags_model.classify(wave, ["white noise", "music", "speech"])[0]
    order = torch.argsort(expected, descending=True).tolist()
    assert [entry["label"] for entry in line["labels"]] == [["white noise", "music", "speech"][i] for i in order]
    assert all(abs(entry["score"] - float(expected[i])) < 1e-4 for entry, i in zip(line["labels"], order))

    spec = importlib.util.spec_from_file_location("eval_map10", ROOT / "scripts" / "eval_map10.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--checkpoint", "audioset_tags", "--dataset", "clotho", "--root", str(tone_dataset),
                        "--split", "evaluation", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    from hybrid_retrieval.data.registry import load_split
    from hybrid_retrieval.evaluation import evaluate

    items = load_split("clotho", tone_dataset, "evaluation")
    assert result["text_to_audio"] == evaluate(tags_model, items, progress=False)["text_to_audio"]
