"""The item-encoder interface every fusion mode implements."""
from __future__ import annotations

from torch import Tensor, nn

from hybrid_retrieval.outputs import TowerOutput


class ItemEncoder(nn.Module):
    """Maps one catalogue item (its audio, optionally its metadata text) to an embedding.

    forward(audio, metadata, present) -> (batch, embed_dim), not normalised.
      audio: the audio tower's output; metadata: the metadata text tower's output or None;
      present: (batch,) bool, False for items that have no metadata (they fall back to audio).
    An item's embedding depends on that item alone, never on a query, so a catalogue can be
    embedded once and searched with a plain nearest-neighbour index.
    """

    uses_audio: bool = True
    uses_metadata: bool = False
    # True: the constructor takes `metadata_projection`, the query text projection when the
    # metadata encoder is shared with the queries (None: a separate encoder, own projection)
    uses_text_projection: bool = False
    # True: the constructor takes `class_embeddings`, (n_classes, text_dim): the text tower's
    # L2-normalised embeddings of the audio tower's class names (`model.class_name_embeddings`)
    uses_class_embeddings: bool = False

    def forward(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                present: Tensor | None = None) -> Tensor:
        raise NotImplementedError
