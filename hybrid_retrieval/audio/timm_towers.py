"""Alternative audio backbones from timm, as MuLan compares: a ResNet-50 and an AST-style ViT.

Both read the same one-channel log-mel "image" as EfficientAT. The AST-style model is a ViT over
non-overlapping 16x16 log-mel patches (128 mel bins -> 8 patch rows) whose position embeddings
are resampled to the clip's length (timm's `dynamic_img_size`). Pretrained timm (ImageNet)
weights are used where the user is online, random initialisation otherwise.
"""
from __future__ import annotations

import logging

import timm
import torch
from torch import Tensor, nn

from hybrid_retrieval import hub
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.outputs import TowerOutput

log = logging.getLogger("hybrid_retrieval")

# Short names accepted in `audio_encoder=timm:<name>`; any other timm model name works as well.
TIMM_ALIASES = {
    "resnet50": ("resnet50", {}),
    "ast": ("vit_base_patch16_224", {"img_size": (128, 1024), "dynamic_img_size": True, "dynamic_img_pad": True}),
}


class TimmBackbone(nn.Module):
    """A timm image model over log-mels (batch, n_mels, frames) -> TowerOutput (no tagging head)."""

    def __init__(self, name: str, pretrained: bool = True) -> None:
        super().__init__()
        model_name, kwargs = TIMM_ALIASES.get(name, (name, {}))
        if pretrained and hub.is_offline():
            log.info("offline: timm model %s starts from random initialisation", model_name)
            pretrained = False
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, in_chans=1, num_classes=0, **kwargs)
        except Exception as exc:
            if not pretrained:
                raise
            log.warning("could not fetch pretrained %s (%s); using random initialisation", model_name, exc)
            self.model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=0, **kwargs)
        self.pretrained = pretrained
        self.embed_dim = self.model.num_features

    def forward(self, mel: Tensor) -> TowerOutput:
        x = mel[:, None] if mel.dim() == 3 else mel
        feats = self.model.forward_features(x)
        embedding = self.model.forward_head(feats, pre_logits=True)
        if feats.dim() == 4:  # CNN feature map (batch, channels, freq, time)
            tokens = feats.mean(dim=2).transpose(1, 2)
        else:  # ViT sequence: drop the prefix (class) tokens, fold the patch grid, average over frequency
            patches = feats[:, self.model.num_prefix_tokens:]
            rows = -(-x.shape[2] // self.model.patch_embed.patch_size[0])
            tokens = patches.reshape(patches.shape[0], rows, -1, patches.shape[-1]).mean(dim=1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TowerOutput(tokens, mask, embedding)


def build_timm(name: str, pretrained: bool = True, weights: str | None = None) -> tuple[TimmBackbone, bool]:
    """The audio family's builder (audio.tower.AUDIO_FAMILIES); `weights` files are not supported."""
    if weights is not None:
        raise BadInputError(f"timm:{name} takes no weights file ({weights}); its pretrained weights come from timm")
    backbone = TimmBackbone(name, pretrained=pretrained)
    return backbone, backbone.pretrained
