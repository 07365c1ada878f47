"""Training-free items: a clip written as the mixture of its AudioSet labels, in the text space.

    item(clip)  = normalise(P(sum_l p_l(clip) * e_l))
    query(text) = normalise(P(t))
    score       = item . query

p_l(clip) is the audio tower's probability of AudioSet label l (the sigmoid of its logit, all 527
labels); e_l is the text tower's embedding of the label's display name ("Dog", "Techno",
"Happy music", ...), L2-normalised; t is the text tower's pooled embedding of the query; P is the
query projection (identity in the `audioset_tags` model config, so nothing is trained). With P the
identity the score is

    score = sum_l p_l * cos(t, e_l) / ||sum_l p_l * e_l||

the query's similarity to each label, weighted by how likely the tagger finds that label in the
clip. Why this form: it is an inner product of an item embedding that depends on the clip alone
and a query embedding that depends on the text alone, so it goes into any nearest-neighbour
index; both live in the text tower's space, so the same item embedding answers text queries,
zero-shot classification prompts, captions (audio -> text) and other clips (audio -> audio, the
cosine of two label mixtures); the label embeddings are normalised so that a label pulls with its
probability alone, not with the length of its name's embedding; and the mixture is normalised so
that scores are cosines, as for every other model. The label embeddings are computed once, when
the model is built (`model.class_name_embeddings`), and are part of the model's weights, so an
index built with it records and checks them like any checkpoint's heads.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fusion.base import ItemEncoder
from fusion.registry import register_fusion
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.projection import Projection


@register_fusion("audioset_tags")
class AudioSetTags(ItemEncoder):
    uses_text_projection = True
    uses_class_embeddings = True

    def __init__(self, audio_dim: int, text_dim: int, embed_dim: int, class_embeddings: Tensor,
                 projection: str = "linear", metadata_projection: nn.Module | None = None) -> None:
        super().__init__()
        if class_embeddings.dim() != 2 or class_embeddings.shape[1] != text_dim:
            raise BadInputError(f"fusion='audioset_tags' needs ({text_dim}-d) class embeddings, "
                                f"got shape {tuple(class_embeddings.shape)}")
        self.register_buffer("class_embeddings", class_embeddings.detach().clone())
        self.projection = metadata_projection or Projection(text_dim, embed_dim, projection)

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        classes = self.class_embeddings.shape[0]
        if audio is None or audio.logits is None or audio.logits.shape[-1] != classes:
            found = "none" if audio is None or audio.logits is None else audio.logits.shape[-1]
            raise BadInputError(f"fusion='audioset_tags' needs the audio tower's {classes} AudioSet logits "
                                f"(an efficientat:* audio_encoder), got {found}")
        weights = torch.sigmoid(audio.logits.to(self.class_embeddings.dtype))
        return self.projection(weights @ self.class_embeddings)
