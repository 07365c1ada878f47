"""What the embedding speed work changed besides the audio runtime: texts batched by length (and
returned in order), and the embedding benchmark's own logic (interleaving, ratios, inputs)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.embedding import text_outputs
from hybrid_retrieval.errors import BadInputError, MissingDependencyError
from hybrid_retrieval.experiments import embed_speed

TEXTS = ["a dog barks", "rain falls steadily on a tin roof while thunder rolls in the far distance", "birds",
         "a car passes by quickly", "", "an orchestra tunes up before the concert, then a single violin plays",
         "wind", "footsteps on gravel"]


@pytest.mark.parametrize("keep_tokens", [False, True])
def test_texts_batched_by_length_come_back_in_order(text_tower, keep_tokens: bool) -> None:
    """Each text's output, with batches of 3 texts of similar length, equals the text embedded
    alone, and the outputs are in the order of the texts."""
    together = text_outputs(text_tower, TEXTS, batch_size=3, keep_tokens=keep_tokens, progress=False)
    assert len(together) == len(TEXTS)
    for text, out in zip(TEXTS, together):
        alone = text_outputs(text_tower, [text], keep_tokens=keep_tokens, progress=False)[0]
        torch.testing.assert_close(out.embedding, alone.embedding, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.tokens, alone.tokens, atol=1e-5, rtol=0)
        assert torch.equal(out.mask, alone.mask)
    if keep_tokens:  # word pieces of each text, not of its batch: the longest text has the most
        assert max(range(len(TEXTS)), key=lambda i: together[i].tokens.shape[1]) == 1


def test_variants_are_interleaved_round_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(embed_speed, "_rate", lambda fn, units, device, min_seconds, max_calls: fn() or units)
    variants = {"a": (lambda: calls.append("a"), 2), "b": (lambda: calls.append("b"), 5)}
    rates = embed_speed.interleaved_rates(variants, rounds=3, device="cpu", min_seconds=0.0)
    assert calls == ["a", "b"] * 3
    assert rates == {"a": [2, 2, 2], "b": [5, 5, 5]}


def test_audio_table_ratios_are_medians_of_per_round_ratios() -> None:
    """Ratios to the original one clip per call, to the original's best batch size of each round
    (not the best of the medians, which would give 4.00 here) and to the plain loop."""
    rates = {"original: 1 clip per call": [10.0, 20.0, 50.0], "original: batches of 4": [12.0, 10.0, 30.0],
             "original: batches of 32": [30.0, 25.0, 20.0],
             "embed_waveforms (openvino): 32 per call": [60.0, 100.0, 150.0],
             "plain eval loop over the tower: 1 clip per call": [10.0, 50.0, 25.0]}
    table = embed_speed.audio_table({"rates": rates}, "title")
    row = next(line for line in table.splitlines() if line.startswith("| embed_waveforms"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # per round: 6, 5, 3 (one clip); best batches 30, 25, 50 -> 2, 4, 3; plain 6, 2, 6
    assert cells[1:] == ["100.0", "5.00", "3.00", "6.00", "60 / 100 / 150"]


def test_text_table_compares_at_the_same_batch_size() -> None:
    rates = {"sentence-transformers encode, batch 32": [100.0, 80.0], "TextTower (text_outputs), batch 32": [110.0, 96.0],
             "sentence-transformers encode, batch 256": [50.0, 40.0], "TextTower (text_outputs), batch 256": [45.0, 60.0]}
    rows = {line.split("|")[1].strip(): line for line in embed_speed.text_table({"rates": rates}, "t").splitlines()}
    assert "| 1.15 |" in rows["TextTower (text_outputs), batch 32"]  # median of 1.10 and 1.20
    assert "| 1.20 |" in rows["TextTower (text_outputs), batch 256"]  # median of 0.90 and 1.50
    assert "| 1.00 |" in rows["sentence-transformers encode, batch 256"]


def test_benchmark_captions_are_fixed_sentences() -> None:
    captions = embed_speed.benchmark_captions(12)
    assert captions == embed_speed.benchmark_captions(12) and len(captions) == 12
    assert all(8 <= len(c.split()) <= 20 for c in captions)


def test_efficientat_checkout_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadInputError, match=f"{tmp_path} is not a checkout of the original EfficientAT"):
        embed_speed.check_efficientat_repo(tmp_path)
    (tmp_path / "models" / "mn").mkdir(parents=True)
    (tmp_path / "models" / "mn" / "model.py").write_text("")
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # as where it is not installed
    with pytest.raises(MissingDependencyError, match="needs torchaudio"):
        embed_speed.check_efficientat_repo(tmp_path)
