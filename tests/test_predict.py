"""`hybrid-retrieval predict`: submission files from a trained model on the tone dataset's clips."""
import csv
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.cli import main
from hybrid_retrieval.data.catalogue import load_catalogue
from hybrid_retrieval.embedding import embed_catalogue, embed_queries
from hybrid_retrieval.model import create_model
from hybrid_retrieval.predict import read_queries
from hybrid_retrieval.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint

# Evaluation clip i of the tone dataset is sound kind i % 4 (conftest.TONES).
KIND_CLIPS = {"a low hum drones": {"evaluation clip 00.wav", "evaluation clip 04.wav"},
              "a high whistle sounds": {"evaluation clip 01.wav", "evaluation clip 05.wav"},
              "white noise hisses": {"evaluation clip 02.wav", "evaluation clip 06.wav"},
              "a beep at mid pitch": {"evaluation clip 03.wav", "evaluation clip 07.wav"}}
QUERIES = [*KIND_CLIPS, 'a beep, "short", at mid pitch']  # a comma and quotes survive the CSV round trip


def _read(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _queries_csv(path: Path, column: str = "caption") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", column])
        writer.writerows([f"q{i}", query] for i, query in enumerate(QUERIES))
    return path


def test_predict_writes_top_k_and_scores(trained_run: Path, tone_dataset: Path, tmp_path: Path,
                                         offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    audio = tone_dataset / "clotho_audio_evaluation"
    out, scores_path = tmp_path / "predictions.csv", tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(trained_run), "--audio", str(audio),
                 "--queries", str(_queries_csv(tmp_path / "queries.csv")), "--out", str(out),
                 "--scores", str(scores_path)]) == 0
    assert "ranked 8 files for 5 queries" in capsys.readouterr().out

    top = _read(out)
    assert top[0] == ["caption"] + [f"fname_{k}" for k in range(1, 9)]  # --top 16, but only 8 files
    assert [row[0] for row in top[1:]] == QUERIES
    for row in top[1:5]:  # the two clips of the sound a query names come first
        assert set(row[1:3]) == KIND_CLIPS[row[0]], row
        assert sorted(row[1:]) == sorted(f"evaluation clip {i:02d}.wav" for i in range(8))

    scores = _read(scores_path)
    ids = scores[0][1:]
    assert scores[0][0] == "caption" and sorted(ids) == sorted(top[1][1:])
    matrix = torch.tensor([[float(v) for v in row[1:]] for row in scores[1:]])
    assert [row[0] for row in scores[1:]] == QUERIES
    for query_scores, row in zip(matrix, top[1:]):
        assert ids[int(query_scores.argmax())] == row[1]  # the argmax is the top-1 file
        assert [ids[i] for i in torch.argsort(query_scores, descending=True, stable=True)] == row[1:]
    # the scores are the model's cosines, computed here from its embeddings
    model, _ = load_checkpoint(trained_run)
    expected = embed_queries(model, QUERIES, progress=False) @ embed_catalogue(
        model, [audio / name for name in ids], progress=False).T
    torch.testing.assert_close(matrix, expected, atol=1e-6, rtol=0)

    assert main(["predict", "--checkpoint", str(trained_run), "--audio", str(audio), "--top", "3",
                 "--queries", str(_queries_csv(tmp_path / "q.csv", column="query")), "--out", str(out)]) == 0
    assert _read(out) == [row[:4] for row in top]  # the `query` column is read too; 3 names per query


def test_hybrid_checkpoint_fuses_the_metadata_csv(tone_dataset: Path, tmp_path: Path, offline_weights: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=32).eval()
    checkpoint = save_checkpoint(tmp_path / "hybrid", model, {"audio_pretrained": True}, TrainingState(1, 1),
                                 frozen=("audio", "text"))
    audio = tone_dataset / "clotho_audio_evaluation"
    metadata = tone_dataset / "clotho_metadata_evaluation.csv"
    queries = _queries_csv(tmp_path / "queries.csv")
    args = ["predict", "--checkpoint", str(checkpoint), "--audio", str(audio), "--queries", str(queries)]
    assert main([*args, "--out", str(tmp_path / "top.csv"), "--scores", str(tmp_path / "fused.csv"),
                 "--metadata", str(metadata)]) == 0
    assert main([*args, "--out", str(tmp_path / "top.csv"), "--scores", str(tmp_path / "plain.csv")]) == 0
    assert "no file has any (pass --metadata)" in caplog.text

    items = load_catalogue(audio, metadata)
    texts = [item.metadata_text("os") for item in items]
    assert texts[0] == "low, tone, clip0"
    query_emb = embed_queries(model, QUERIES, progress=False)
    paths = [item.audio_path for item in items]
    for name, expected_items in (("fused", embed_catalogue(model, paths, texts, progress=False)),
                                 ("plain", embed_catalogue(model, paths, [""] * len(paths), progress=False))):
        scores = _read(tmp_path / f"{name}.csv")
        assert scores[0][1:] == [item.item_id for item in items]
        matrix = torch.tensor([[float(v) for v in row[1:]] for row in scores[1:]])
        torch.testing.assert_close(matrix, query_emb @ expected_items.T, atol=1e-6, rtol=0)


def test_bad_queries_are_one_error_and_write_nothing(trained_run: Path, tone_dataset: Path, tmp_path: Path,
                                                    offline_weights: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,text\na.wav,a dog\n", encoding="utf-8")
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(trained_run), "--audio", str(tone_dataset / "clotho_audio_evaluation"),
                 "--queries", str(bad), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: no caption or query column (header: ['file_name', 'text'])\n"
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]

    bad.write_text("caption\na dog barks\n\"  \"\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: empty caption"):
        read_queries(bad)
