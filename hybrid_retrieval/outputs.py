"""`TowerOutput`: what the audio and text towers hand to the projection and fusion heads."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


@dataclass
class TowerOutput:
    """A batch of encoded inputs.

    tokens: (batch, length, dim) sequence: audio frames, or text word pieces.
    mask: (batch, length) bool, True where a token is real (False: padding).
    embedding: (batch, dim) pooled embedding of the whole input.
    logits: (batch, classes) tagging logits, for towers with a tagging head (EfficientAT).
    """

    tokens: Tensor
    mask: Tensor
    embedding: Tensor
    logits: Tensor | None = None

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def to(self, device: torch.device | str) -> TowerOutput:
        return TowerOutput(
            self.tokens.to(device),
            self.mask.to(device),
            self.embedding.to(device),
            None if self.logits is None else self.logits.to(device),
        )

    def unbatch(self) -> list[TowerOutput]:
        """One output per example, with padding removed."""
        out = []
        for i in range(len(self)):
            keep = self.mask[i]
            out.append(
                TowerOutput(
                    self.tokens[i, keep][None],
                    self.mask[i, keep][None],
                    self.embedding[i][None],
                    None if self.logits is None else self.logits[i][None],
                )
            )
        return out

    @staticmethod
    def collate(outputs: Sequence[TowerOutput]) -> TowerOutput:
        """Stack single-example outputs, right-padding token sequences (mask False on padding)."""
        tokens = pad_sequence([o.tokens[0] for o in outputs], batch_first=True)
        mask = pad_sequence([o.mask[0] for o in outputs], batch_first=True, padding_value=False)
        logits = None if outputs[0].logits is None else torch.cat([o.logits for o in outputs])
        return TowerOutput(tokens, mask, torch.cat([o.embedding for o in outputs]), logits)
