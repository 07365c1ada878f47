"""Fusion modes: shapes, masking, the metadata-less fallback, query independence, training."""
from pathlib import Path

import pytest
import torch

import fusion
from hybrid_retrieval.data.registry import load_split
from hybrid_retrieval.evaluation import evaluate
from hybrid_retrieval.model import create_model
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.training.checkpoint import load_checkpoint
from hybrid_retrieval.training.config import split_config
from hybrid_retrieval.training.loop import train

A, T, D = 384, 384, 64


def _outputs(batch: int, length: int, dim: int, seed: int, lengths: list[int] | None = None) -> TowerOutput:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, dim, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    for i, n in enumerate(lengths or []):
        mask[i, n:] = False
    return TowerOutput(tokens, mask, torch.randn(batch, dim, generator=g))


@pytest.mark.parametrize("name", ["none", "late", "mid", "metadata"])
def test_registry_builds_every_mode_with_the_right_shape(name: str) -> None:
    torch.manual_seed(0)
    encoder = fusion.create_fusion(name, audio_dim=A, text_dim=T, embed_dim=D).eval()
    out = encoder(_outputs(3, 8, A, 0), _outputs(3, 5, T, 1), torch.tensor([True, False, True]))
    assert out.shape == (3, D) and torch.isfinite(out).all()
    assert set(fusion.FUSIONS) >= {"none", "late", "mid", "metadata"}


def test_bad_fusion_options() -> None:
    with pytest.raises(ValueError, match="bad options for fusion='late'"):
        fusion.create_fusion("late", audio_dim=A, text_dim=T, embed_dim=D, layers=3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        fusion.create_fusion("late", audio_dim=A, text_dim=T, embed_dim=D, weight=1.0)


def test_mid_fusion_padding_does_not_leak() -> None:
    """Padded metadata tokens (short metadata) and padded audio frames never reach the output."""
    torch.manual_seed(0)
    mid = fusion.create_fusion("mid", audio_dim=A, text_dim=T, embed_dim=D, width=32, heads=4).eval()
    audio, meta = _outputs(2, 8, A, 0, lengths=[8, 5]), _outputs(2, 6, T, 1, lengths=[2, 6])
    base = mid(audio, meta)
    noisy_meta = TowerOutput(meta.tokens.clone(), meta.mask, meta.embedding)
    noisy_meta.tokens[~meta.mask] = 1e4
    noisy_audio = TowerOutput(audio.tokens.clone(), audio.mask, audio.embedding)
    noisy_audio.tokens[~audio.mask] = -1e4
    torch.testing.assert_close(mid(noisy_audio, noisy_meta), base, atol=1e-5, rtol=0)
    # the same item alone, without any padding, gets the same embedding
    alone = mid(TowerOutput(audio.tokens[1:, :5], audio.mask[1:, :5], audio.embedding[1:]),
                TowerOutput(meta.tokens[1:], meta.mask[1:], meta.embedding[1:]))
    torch.testing.assert_close(alone, base[1:], atol=1e-5, rtol=0)


def test_mid_fusion_audio_pooling_respects_padding() -> None:
    torch.manual_seed(0)
    mid = fusion.create_fusion("mid", audio_dim=A, text_dim=T, embed_dim=D, width=32, heads=4, audio_pool=4).eval()
    audio = _outputs(2, 10, A, 0, lengths=[10, 6])
    tokens, mask = mid._pooled_audio(audio)
    assert tokens.shape == (2, 3, A) and mask.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(tokens[1, 1], audio.tokens[1, 4:6].mean(0))


@pytest.mark.parametrize("name", ["late", "mid"])
def test_items_without_metadata_fall_back_to_audio(name: str) -> None:
    torch.manual_seed(0)
    encoder = fusion.create_fusion(name, audio_dim=A, text_dim=T, embed_dim=D).eval()
    audio, meta = _outputs(3, 8, A, 0), _outputs(3, 5, T, 1)
    with_meta = encoder(audio, meta, torch.tensor([True, False, True]))
    audio_only = encoder(audio, None)
    torch.testing.assert_close(with_meta[1], audio_only[1], atol=1e-5, rtol=0)
    assert not torch.allclose(with_meta[0], audio_only[0], atol=1e-3)


def test_late_fusion_is_a_blend_of_unit_vectors() -> None:
    late = fusion.create_fusion("late", audio_dim=A, text_dim=T, embed_dim=D, weight=0.25, learn_weight=False)
    audio, meta = _outputs(2, 1, A, 0), _outputs(2, 1, T, 1)
    a = torch.nn.functional.normalize(late.audio_proj(audio.embedding), dim=-1)
    m = torch.nn.functional.normalize(late.metadata_proj(meta.embedding), dim=-1)
    torch.testing.assert_close(late(audio, meta), 0.75 * a + 0.25 * m)
    assert not late.weight_logit.requires_grad


def test_metadata_only_ignores_audio_and_marks_missing() -> None:
    encoder = fusion.create_fusion("metadata", audio_dim=A, text_dim=T, embed_dim=D)
    meta = _outputs(3, 4, T, 1)
    out = encoder(None, meta, torch.tensor([True, False, False]))
    torch.testing.assert_close(out[1], encoder.missing)
    torch.testing.assert_close(out[1], out[2])
    assert encoder.uses_audio is False


def test_shared_and_separate_metadata_encoders(offline_weights: Path) -> None:
    shared = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=D)
    assert shared.metadata_tower is None and shared.item_encoder.metadata_proj is shared.text_proj
    separate = create_model("mn04_minilm", fusion="late", metadata="os", embed_dim=D, separate_metadata_encoder=True)
    assert separate.metadata_tower is not None and separate.metadata_tower is not separate.text_tower
    assert separate.item_encoder.metadata_proj is not separate.text_proj
    with pytest.raises(ValueError, match="needs metadata"):
        create_model("mn04_minilm", fusion="late", embed_dim=D)


@pytest.mark.parametrize("name", ["late", "mid"])
def test_item_embeddings_are_query_independent(name: str, offline_weights: Path) -> None:
    """A catalogue embedded once, in any batches and order, gives the same vectors; scores are a
    plain dot product with them, so a nearest-neighbour index can serve any query."""
    torch.manual_seed(0)
    model = create_model("mn04_minilm", fusion=name, metadata="os", embed_dim=D).eval()
    waves = torch.randn(4, 32_000) * 0.1
    metadata = ["rain; thunder", "", "dog barking loud outside", "bird"]
    with torch.inference_mode():
        together = model.encode_items(waves, metadata)
        order = [2, 0, 3, 1]
        shuffled = model.encode_items(waves[order], [metadata[i] for i in order])
        single = torch.cat([model.encode_items(waves[i:i + 1], [metadata[i]]) for i in range(4)])
        queries = model.encode_text(["a dog barks", "rain falls"])
    torch.testing.assert_close(shuffled, together[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(single, together, atol=1e-5, rtol=0)
    assert (queries @ together.T).shape == (2, 4)


@pytest.mark.parametrize("fusion_name,metadata", [("none", ""), ("late", "os"), ("mid", "os"), ("metadata", "os")])
def test_tiny_train_and_eval_per_fusion_mode(fusion_name: str, metadata: str, tmp_path: Path,
                                             tone_dataset: Path, offline_weights: Path) -> None:
    flat = {"dataset": "clotho", "data_root": str(tone_dataset), "epochs": 3, "batch_size": 16, "lr_head": 3e-3,
            "progress": False, "cache_dir": str(tmp_path / "features"), "eval_every": 0, "embed_dim": 128,
            "fusion": fusion_name, "metadata": metadata,
            "fusion_options": {"mid": {"width": 64, "layers": 1, "heads": 4}}}
    model_config, train_config = split_config(flat)
    result = train(model_config, train_config, tmp_path / "run")
    model, saved = load_checkpoint(result["checkpoint"])
    assert saved["model"]["fusion"] == fusion_name
    items = load_split("clotho", tone_dataset, "evaluation")
    metrics = evaluate(model, items, tmp_path / "features", progress=False)["text_to_audio"]
    assert metrics == result["val"]["text_to_audio"] or set(metrics) == {"mAP@10", "R@1", "R@5", "R@10"}
    # 8 clips of 4 sound kinds, captions and keywords name the kind: far above chance (~0.34)
    assert metrics["mAP@10"] > 0.45
