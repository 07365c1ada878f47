"""scripts/eval_map10.py --relevance end to end: a trained model on the tone dataset, scored with
extra relevance annotations written in the organisers' format."""
import json
import runpy
from pathlib import Path

import pytest

from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.errors import BadInputError, run_reporting_errors
from hybrid_retrieval.evaluation import relevance_lists
from hybrid_retrieval.metrics import retrieval_metrics
from hybrid_retrieval.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Evaluation clip i of the tone dataset is sound kind i % 4 (conftest.TONES): clips 0 and 4 hum,
# 1 and 5 whistle, 2 and 6 hiss. As in DCASE 2025, a caption's own clip need not be listed.
RELEVANCE = {
    "a low hum drones in clip 0 take 0": ["evaluation clip 00.wav", "evaluation clip 04.wav"],
    "a high whistle sounds in clip 5 take 2": ["evaluation clip 05.wav", "evaluation clip 01.wav"],
    "white noise hisses in clip 2 take 1": ["evaluation clip 06.wav"],
}


def _write_relevance(path: Path, table: dict[str, list[str]]) -> Path:
    lines = ["query,audio_filenames"] + [f'"{query}","{files!r}"' for query, files in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_script() -> dict:
    return runpy.run_path(str(ROOT / "scripts" / "eval_map10.py"))


def _args(run: Path, root: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(run), "--dataset", "clotho", "--root", str(root), "--split", "evaluation", *extra]


def test_eval_with_relevance_file(eval_script: dict, trained_run: Path, tone_dataset: Path, tmp_path: Path,
                                  offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    relevance = _write_relevance(tmp_path / "relevance.csv", RELEVANCE)
    assert eval_script["main"](_args(trained_run, tone_dataset, "--relevance", str(relevance), "--json")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = result["relevance"]
    assert scores["queries"] == 3 and list(scores["multi"]) == ["mAP@16", "mAP@10", "R@1", "R@5", "R@10"]

    # the same numbers from embeddings computed here and relevant indices written out by hand
    model, _ = load_checkpoint(trained_run)
    items = load_split("clotho", tone_dataset, "evaluation")
    item_emb = embed_catalogue(model, [item.audio_path for item in items], progress=False)
    captions = [caption for item in items for caption in item.captions]
    similarity = embed_queries(model, captions, progress=False) @ item_emb.T
    rows = [captions.index(query) for query in RELEVANCE]
    expected = retrieval_metrics(similarity[rows], [[0, 4], [5, 1], [6]], map_ks=(16, 10))
    assert scores["multi"] == pytest.approx(expected, abs=1e-12)
    owners = [i for i, item in enumerate(items) for _ in item.captions]
    assert scores["single"] == pytest.approx(retrieval_metrics(similarity, owners, map_ks=(16, 10)), abs=1e-12)
    # the original single-relevance numbers are the ones printed without --relevance
    assert scores["single"]["mAP@10"] == pytest.approx(result["text_to_audio"]["mAP@10"], abs=1e-12)
    # the model tells the four sounds apart: every matching clip is in the top 5 (two per sound)
    assert scores["multi"]["R@5"] == 1.0

    assert eval_script["main"](_args(trained_run, tone_dataset, "--relevance", str(relevance))) == 0
    table = capsys.readouterr().out.splitlines()
    start = table.index("| system | mAP@16 | mAP@10 | R@1 | R@5 | R@10 |")
    assert table[start - 1].startswith("DCASE 2025, text->audio: 3 queries of")
    original, extra = table[start + 2], table[start + 3]
    assert original.startswith("| original: each of the 40 captions, its own clip | ")
    assert extra == ("| extra annotations: all matching clips | "
                     + " | ".join(f"{scores['multi'][k]:.4f}" for k in ("mAP@16", "mAP@10", "R@1", "R@5", "R@10"))
                     + " |")


def test_relevance_not_in_the_split_is_one_error(eval_script: dict, trained_run: Path, tone_dataset: Path,
                                                 tmp_path: Path, offline_weights: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    wrong = {**RELEVANCE, "a cat meows": ["evaluation clip 03.wav"],
             "a low hum drones in clip 4 take 1": ["evaluation clip 99.wav", "evaluation clip 04.wav"]}
    relevance = _write_relevance(tmp_path / "relevance.csv", wrong)
    status = run_reporting_errors(lambda: eval_script["main"](_args(trained_run, tone_dataset,
                                                                    "--relevance", str(relevance))))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == ("error: the relevance annotations do not match this split: 1 queries are not in the split, "
                   "e.g. ['a cat meows']; 1 file names are not in the split, e.g. ['evaluation clip 99.wav']\n")


def test_relevance_lists_match_by_exact_file_name(tone_dataset: Path) -> None:
    items = load_split("clotho", tone_dataset, "evaluation")
    captions = [caption for item in items for caption in item.captions]
    rows, relevant = relevance_lists(items, captions, RELEVANCE)
    assert rows == [0, 27, 11] and relevant == [[0, 4], [5, 1], [6]]  # caption row = 5 * clip + take
    with pytest.raises(BadInputError, match=r"file names are not in the split, e.g. \['evaluation clip 00.WAV'\]"):
        relevance_lists(items, captions, {"a low hum drones in clip 0 take 0": ["evaluation clip 00.WAV"]})
    with pytest.raises(BadInputError, match="no queries"):
        relevance_lists(items, captions, {})
