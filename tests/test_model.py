"""Model factory, audio tower choices and the shared embedding space."""
from pathlib import Path

import pytest
import torch

from hybrid_retrieval.audio.tower import create_audio_tower
from hybrid_retrieval.model import ModelConfig, create_model, get_model_config, list_models


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


def test_learnable_temperature_is_clamped(offline_weights: Path) -> None:
    model = create_model("mn04_minilm", embed_dim=16, learn_temperature=True, min_temperature=0.02)
    assert model.log_logit_scale.requires_grad
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(50.0)


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
