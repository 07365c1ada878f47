"""Model factory, audio tower choices and the shared embedding space."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hybrid_retrieval.audio.tower import create_audio_tower
from hybrid_retrieval.losses import ContrastiveLoss
from hybrid_retrieval.model import ModelConfig, create_model, get_model_config, list_models
from hybrid_retrieval.training.loop import train_step


def test_bundled_configs() -> None:
    assert {"mn04_minilm", "mn10_minilm", "resnet50_minilm", "ast_minilm"} <= set(list_models())
    assert get_model_config("mn10_minilm").audio_encoder == "efficientat:mn10_as"
    with pytest.raises(ValueError, match="available"):
        get_model_config("nope")
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.from_dict({"colour": "red"})


def test_dual_encoder_shapes_and_normalisation(offline_weights: Path) -> None:
    model = create_model("mn04_minilm").eval()
    with torch.inference_mode():
        items = model.encode_items(torch.randn(3, 32_000) * 0.1)
        queries = model.encode_text(["a dog barks", "rain on a roof"])
    assert items.shape == (3, 1024) and queries.shape == (2, 1024)  # default shared dimension
    torch.testing.assert_close(items.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(2))
    assert model.logit_scale.item() == pytest.approx(1 / 0.05)
    assert not model.log_logit_scale.requires_grad


class _Aligned(nn.Module):
    """Stands in for the model's forward in train_step: each query equal to its item, the four
    pairs at cosine 0.95 from each other, so the contrastive loss falls as the logit scale grows
    (its gradient pushes the temperature down) without saturating in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(8))  # something for an optimiser to train

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = nn.functional.normalize(torch.eye(4, 8) + 1.5 + self.offset, dim=-1)
        return embeddings, embeddings.clone()


def test_learnable_temperature_gets_gradient_at_and_beyond_the_cap() -> None:
    model = create_model("mn04_minilm", pretrained=False, embed_dim=16, learn_temperature=True,
                         min_temperature=0.02)
    assert model.log_logit_scale.requires_grad
    cap = math.log(50.0)
    for value in (cap, cap + 0.5):  # at the cap, and beyond it (a checkpoint of the old clamp)
        model.log_logit_scale.grad = None
        with torch.no_grad():
            model.log_logit_scale.fill_(value)
        queries, items = _Aligned()()
        ContrastiveLoss()(queries, items, torch.arange(4), model.logit_scale).backward()
        assert model.log_logit_scale.grad < 0  # not clamped away: the loss still moves it
        assert model.logit_scale.item() == pytest.approx(math.exp(value))


def test_learnable_temperature_is_clamped_after_each_step() -> None:
    model = create_model("mn04_minilm", pretrained=False, embed_dim=16, learn_temperature=True,
                         temperature=0.021, min_temperature=0.02)
    optimizer = torch.optim.AdamW([model.log_logit_scale], lr=0.1, weight_decay=0.0)
    before = model.log_logit_scale.item()
    train_step(_Aligned(), model, ContrastiveLoss(), optimizer, {}, torch.arange(4))
    # AdamW's first step moves the parameter by lr = 0.1 upwards (the gradient is negative),
    # past log(50) = log(1 / 0.021) + 0.049; the clamp after the step puts it back on the cap
    assert model.log_logit_scale.grad < 0 and before + 0.1 > math.log(50.0)
    assert model.log_logit_scale.item() == pytest.approx(math.log(50.0), abs=1e-6)
    # a learnable temperature configured below the floor starts at the floor
    low = create_model("mn04_minilm", pretrained=False, embed_dim=16, learn_temperature=True,
                       temperature=0.005, min_temperature=0.02)
    assert low.logit_scale.item() == pytest.approx(50.0)


def test_fixed_temperature_is_used_as_given() -> None:
    model = create_model("mn04_minilm", pretrained=False, embed_dim=16, temperature=0.005, min_temperature=0.01)
    assert model.logit_scale.item() == pytest.approx(200.0) and not model.log_logit_scale.requires_grad
    net = _Aligned()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    train_step(net, model, ContrastiveLoss(), optimizer, {}, torch.arange(4))
    assert model.logit_scale.item() == pytest.approx(200.0) and net.offset.grad.abs().sum() > 0


@pytest.mark.parametrize("spec,dim", [("timm:resnet50", 2048), ("timm:ast", 768)])
def test_timm_audio_towers_offline(spec: str, dim: int) -> None:
    """ResNet-50 and the AST-style ViT over 16x16 log-mel patches, random initialisation offline."""
    tower = create_audio_tower(spec, pretrained=True).eval()  # offline: falls back to random init
    assert tower.backbone.pretrained is False and tower.pretrained is False
    with torch.inference_mode():
        out = tower(torch.randn(2, 64_000) * 0.1)  # 2 s -> 200 frames
    assert out.embedding.shape == (2, dim) and out.logits is None
    frames = 200 // 16 + 1 if spec == "timm:ast" else -(-200 // 32)  # padded 16-frame patches / stride 32
    assert out.tokens.shape == (2, frames, dim)


def test_unknown_audio_encoder() -> None:
    with pytest.raises(ValueError, match="family"):
        create_audio_tower("torchaudio:wav2vec")


def test_unknown_fusion(offline_weights: Path) -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        create_model("mn04_minilm", fusion="early")
