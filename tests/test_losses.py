"""Contrastive losses against pytorch-metric-learning and first principles."""
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss
from torch import nn

from hybrid_retrieval.losses import ContrastiveLoss


def _pair_batch(n: int = 12, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    a = nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return q, a


@pytest.mark.parametrize("ids", [list(range(12)), [0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8]])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_ntxent_equals_pytorch_metric_learning_in_both_directions(ids: list[int], temperature: float) -> None:
    """PML's NTXentLoss on (queries, labels, ref=items) is the text->audio half; swapping the roles
    gives the audio->text half; ours is their mean. Pairs sharing a clip are positives."""
    q, a = _pair_batch()
    labels = torch.tensor(ids)
    pml = NTXentLoss(temperature=temperature)
    expected = 0.5 * (pml(q, labels, ref_emb=a, ref_labels=labels.clone())
                      + pml(a, labels, ref_emb=q, ref_labels=labels.clone()))
    ours = ContrastiveLoss("ntxent")(q, a, labels, 1.0 / temperature)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_ntxent_with_unique_clips_is_clip_loss() -> None:
    q, a = _pair_batch()
    logits = 20.0 * q @ a.T
    target = torch.arange(12)
    clip = 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))
    torch.testing.assert_close(ContrastiveLoss("ntxent")(q, a, target, 20.0), clip)


def _mulan_cmc_numpy(q: np.ndarray, a: np.ndarray, ids: list[int], tau: float) -> float:
    """MuLan's loss written out with loops: for each pair i, -log(h(f_i, g_i) / sum over j != i of
    [h(f_i, g_j) + h(f_j, g_i)]), h(x, y) = exp(x.y / tau); pairs of one clip are not negatives of
    each other (left out of the sum)."""
    h = lambda x, y: math.exp(float(np.dot(x, y)) / tau)  # noqa: E731
    total = 0.0
    for i in range(len(q)):
        denominator = sum(h(q[i], a[j]) + h(q[j], a[i]) for j in range(len(q)) if j != i and ids[j] != ids[i])
        total += -math.log(h(q[i], a[i]) / denominator)
    return total / len(q)


@pytest.mark.parametrize("ids", [list(range(12)), [0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8], [0] * 11 + [1]])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_cmc_is_mulans_formula(ids: list[int], tau: float) -> None:
    q, a = _pair_batch()
    expected = _mulan_cmc_numpy(q.double().numpy(), a.double().numpy(), ids, tau)
    ours = ContrastiveLoss("cmc")(q.double(), a.double(), torch.tensor(ids), 1.0 / tau)
    assert ours.item() == pytest.approx(expected, rel=1e-12)


def test_cmc_without_any_negative_is_zero_with_finite_gradients() -> None:
    q, a = _pair_batch(4)
    a.requires_grad_(True)
    loss = ContrastiveLoss("cmc")(q, a, torch.zeros(4, dtype=torch.long), 20.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(a.grad).all()
    # one pair of another clip: every pair has a negative again
    b = a.detach().clone().requires_grad_(True)
    loss = ContrastiveLoss("cmc")(q, b, torch.tensor([0, 0, 0, 1]), 20.0)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_perfect_alignment_gives_near_zero_loss_and_gradients_flow() -> None:
    q, _ = _pair_batch(8, 64)
    q = nn.functional.normalize(torch.eye(8, 64), dim=-1)
    assert ContrastiveLoss()(q, q.clone(), torch.arange(8), 1 / 0.05).item() < 1e-6
    a = torch.randn(8, 64, requires_grad=True)
    loss = ContrastiveLoss()(q, nn.functional.normalize(a, dim=-1), torch.arange(8), 1 / 0.05)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert math.isfinite(loss.item())


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="infonce"):
        ContrastiveLoss("infonce")
