"""EfficientAT's MobileNetV3 audio tagger (Schmid, Koutini & Widmer, ICASSP 2023).

A MobileNetV3-Large (Howard et al., 2019) with one input channel (a log-mel spectrogram),
width scaled by `width_mult`, channel squeeze-and-excitation, and an MLP head with 527
AudioSet outputs. Parameter names follow the released checkpoints (`mn04_as`, ..., `mn40_as_ext`)
so their state dicts load with `strict=True`:

    features.0                stem: 3x3 conv, stride 2          (ConvBNAct: .0 conv, .1 batch norm)
    features.1 .. features.15 inverted residual blocks          (.block.{i}: expand, depthwise, [SE], project)
    features.16               1x1 conv to 6 x the last block's channels
    classifier                avg-pool, flatten, linear, hardswish, dropout, linear(527)

Reading it top to bottom: the block table, the three building blocks, then the network.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid_retrieval.errors import BadInputError, IncompatibleModelError
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.weights_fit import find_misfit

# MobileNetV3-Large's inverted-residual table (paper, Table 1), before width scaling:
# (kernel, expanded channels, output channels, squeeze-excitation, hardswish, stride)
_MOBILENETV3_LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
_STEM_CHANNELS = 16
_HEAD_HIDDEN = 1280

# Model configs as data: the released AudioSet models differ only in width.
EFFICIENTAT_CONFIGS: dict[str, dict] = {
    "mn04_as": {"width_mult": 0.4},
    "mn05_as": {"width_mult": 0.5},
    "mn10_as": {"width_mult": 1.0},
    "mn20_as": {"width_mult": 2.0},
    "mn30_as": {"width_mult": 3.0},
    "mn40_as": {"width_mult": 4.0},
    "mn40_as_ext": {"width_mult": 4.0},
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never more than 10 % below it
    (the rounding rule of the MobileNet papers; the checkpoints' shapes depend on it)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.Hardswish) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: average over frequency and time, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale[:, :, None, None]


class ChannelSE(nn.Module):
    """EfficientAT can run several SE layers (over channels, frequency, time) side by side and
    merge them; the released AudioSet models use the channel one alone. The wrapper keeps the
    checkpoints' parameter path (`conc_se_layers.0.fc1`)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, squeeze)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> [SE] -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, c_in: int, kernel: int, c_expanded: int, c_out: int, use_se: bool,
                 hardswish: bool, stride: int) -> None:
        super().__init__()
        activation = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if c_expanded != c_in:
            layers.append(ConvBNAct(c_in, c_expanded, 1, activation=activation))
        layers.append(ConvBNAct(c_expanded, c_expanded, kernel, stride, groups=c_expanded, activation=activation))
        if use_se:
            layers.append(ChannelSE(c_expanded, make_divisible(c_expanded // 4)))
        layers.append(ConvBNAct(c_expanded, c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientATMobileNet(nn.Module):
    """MobileNetV3 over a log-mel spectrogram (batch, n_mels, frames) -> TowerOutput.

    Tokens are the last feature map averaged over frequency (one per 32 input frames, i.e. 320 ms);
    the embedding is their mean, which equals EfficientAT's global average pooling.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 527, dropout: float = 0.2) -> None:
        super().__init__()
        width = lambda c: make_divisible(c * width_mult)  # noqa: E731
        c_in = width(_STEM_CHANNELS)
        layers: list[nn.Module] = [ConvBNAct(1, c_in, 3, stride=2)]
        for kernel, expanded, c_out, use_se, hardswish, stride in _MOBILENETV3_LARGE:
            layers.append(InvertedResidual(c_in, kernel, width(expanded), width(c_out), use_se, hardswish, stride))
            c_in = width(c_out)
        self.embed_dim = 6 * c_in
        layers.append(ConvBNAct(c_in, self.embed_dim, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(self.embed_dim, width(_HEAD_HIDDEN)),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(width(_HEAD_HIDDEN), num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, mel: Tensor) -> TowerOutput:
        fmap = self.features(mel[:, None] if mel.dim() == 3 else mel)  # (batch, channels, freq, time)
        tokens = fmap.mean(dim=2).transpose(1, 2)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TowerOutput(tokens, mask, tokens.mean(dim=1), self.classifier(fmap))


def efficientat(name: str) -> EfficientATMobileNet:
    """An EfficientAT model by release name (`mn04_as`, ..., `mn40_as_ext`), randomly initialised."""
    if name not in EFFICIENTAT_CONFIGS:
        raise BadInputError(f"unknown EfficientAT model {name!r}; known: {sorted(EFFICIENTAT_CONFIGS)}")
    return EfficientATMobileNet(**EFFICIENTAT_CONFIGS[name])


def build_efficientat(name: str, pretrained: bool = True, weights: str | None = None) -> tuple[nn.Module, bool]:
    """The audio family's builder (audio.tower.AUDIO_FAMILIES): the model `name` with its released
    AudioSet weights (or the explicit `weights` file) when `pretrained` or `weights` is given,
    loaded strictly; weights of another model are refused naming the file and the first tensor
    that does not fit."""
    from hybrid_retrieval.audio.pretrained import load_state_dict, resolve_weights

    model = efficientat(name)
    if not (pretrained or weights):
        return model, False
    path = resolve_weights(name, weights)
    state = load_state_dict(path)
    misfit = find_misfit(model.state_dict(), state)
    if misfit:
        raise IncompatibleModelError(f"weights file {path} does not fit EfficientAT {name}: {misfit}; "
                                     "is it another model's?")
    model.load_state_dict(state, strict=True)
    return model, True
