"""DCASE 2024 task 8 metrics on hand-computed examples."""
import pytest
import torch

from hybrid_retrieval.metrics import audio_to_text_metrics, ranks_of_relevant, retrieval_metrics


def test_hand_computed_example() -> None:
    # 3 queries over 12 items; relevant items at ranks 1, 3 and 11
    sim = torch.zeros(3, 12)
    sim[0, 4] = 1.0
    sim[1] = torch.linspace(1, 0, 12)
    sim[2] = torch.linspace(1, 0, 12)
    relevant = [4, 2, 10]
    assert ranks_of_relevant(sim, relevant).tolist() == [1, 3, 11]
    m = retrieval_metrics(sim, relevant)
    assert m["mAP@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == pytest.approx(2 / 3)
    assert m["R@10"] == pytest.approx(2 / 3)


def test_ties_count_only_strictly_higher_scores() -> None:
    sim = torch.tensor([[0.5, 0.5, 0.5, 0.9]])
    assert ranks_of_relevant(sim, [2]).tolist() == [2]
    assert retrieval_metrics(sim, [2])["mAP@10"] == pytest.approx(0.5)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="n_queries"):
        retrieval_metrics(torch.zeros(3, 4), [0, 1])
    with pytest.raises(ValueError, match="relevant indices"):
        retrieval_metrics(torch.zeros(2, 4), [0, 4])


def test_audio_to_text() -> None:
    # 2 items, 4 captions (captions 0,1 -> item 0; 2,3 -> item 1)
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    owners = [0, 0, 1, 1]
    m = audio_to_text_metrics(sim, owners)
    # item 0 ranks captions by column 0: [0 (own), 3, 2, 1 (own)] -> hits at ranks 1 and 4
    # item 1 ranks captions by column 1: [1, 2 (own), 3 (own), 0] -> hits at ranks 2 and 3
    ap0 = (1 / 1 + 2 / 4) / 2
    ap1 = (1 / 2 + 2 / 3) / 2
    assert m["mAP@10"] == pytest.approx((ap0 + ap1) / 2)
    assert m["R@1"] == pytest.approx(0.5)
    assert m["R@5"] == pytest.approx(1.0)
