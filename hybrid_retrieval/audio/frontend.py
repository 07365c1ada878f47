"""Log-mel front end, numerically equal to the one EfficientAT's AudioSet models were trained on.

32 kHz input, pre-emphasis, a 1024-point STFT with an 800-sample Hann window and hop 320,
Kaldi-style triangular mel banks (128 bins, 0 to 15 kHz), ``log(x + 1e-5)`` and the fast
normalisation ``(x + 4.5) / 5``. In training, the mel band edges jitter and SpecAugment-style
frequency/time masks are applied; in eval mode the transform is deterministic.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid_retrieval.config_base import StrictConfig


@dataclass(frozen=True)
class FrontendConfig(StrictConfig):
    sample_rate: int = 32_000
    n_mels: int = 128
    win_length: int = 800
    hop_length: int = 320
    n_fft: int = 1024
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2 - fmax_aug_range / 2, as EfficientAT
    preemphasis: float = 0.97
    freq_mask: int = 48  # max width of the training frequency mask, in mel bins (0 disables)
    time_mask: int = 192  # max width of the training time mask, in frames (0 disables)
    fmin_aug_range: int = 10  # training jitter of the lowest band edge, in Hz
    fmax_aug_range: int = 2000  # training jitter of the highest band edge, in Hz


def _hz_to_kaldi_mel(freq: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> Tensor:
    """Triangular filters equally spaced on Kaldi's mel scale, shape (n_mels, n_fft // 2 + 1).

    Written here rather than imported because the only library that has Kaldi's variant
    (torchaudio.compliance.kaldi) is not otherwise a dependency; librosa's mel filters use the
    Slaney scale and area normalisation and give different numbers. As in Kaldi, the Nyquist
    bin gets no weight.
    """
    n_bins = n_fft // 2
    bin_hz = torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft)
    mel = _hz_to_kaldi_mel(bin_hz)[None, :]
    lo, hi = _hz_to_kaldi_mel(torch.tensor([float(fmin), float(fmax)], dtype=torch.float64))
    step = (hi - lo) / (n_mels + 1)
    left = lo + step * torch.arange(n_mels, dtype=torch.float64)[:, None]
    centre, right = left + step, left + 2 * step
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return nn.functional.pad(banks, (0, 1)).float()


def _csr(banks: Tensor) -> Tensor:
    with warnings.catch_warnings():  # torch says once per process that CSR tensors are in beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return banks.to_sparse_csr()


def spec_augment_mask(spec: Tensor, max_width: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero one random band of up to `max_width` bins along `dim` (1: mel, 2: time), per example.

    torchaudio's FrequencyMasking/TimeMasking do this, but torchaudio is not a dependency and the
    operation is three lines of tensor arithmetic.
    """
    size = spec.shape[dim]
    batch = spec.shape[0]
    width = torch.rand(batch, generator=generator, device=spec.device) * min(max_width, size)
    start = torch.rand(batch, generator=generator, device=spec.device) * (size - width)
    idx = torch.arange(size, device=spec.device)[None, :]
    masked = (idx >= start.long()[:, None]) & (idx < (start + width).long()[:, None])
    shape = [batch, 1, 1]
    shape[dim] = size
    return spec.masked_fill(masked.view(shape), 0.0)


class LogMelFrontend(nn.Module):
    """Waveform (batch, samples) at 32 kHz -> normalised log-mel (batch, n_mels, frames)."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FrontendConfig()
        self.fmax = config.fmax if config.fmax is not None else config.sample_rate / 2 - config.fmax_aug_range / 2
        # The Hann window centred in n_fft samples, as torch.stft pads a shorter one.
        side = (config.n_fft - config.win_length) // 2
        self.register_buffer("window", nn.functional.pad(torch.hann_window(config.win_length, periodic=False),
                                                         (side, config.n_fft - config.win_length - side)),
                             persistent=False)
        self.register_buffer(
            "mel_banks",
            kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.fmin, self.fmax),
            persistent=False,
        )
        self._sparse: tuple[Tensor, Tensor] | None = None  # (mel_banks, their CSR form)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sparse": None}  # a CSR tensor cannot be copied or pickled; remade on use

    @property
    def min_samples(self) -> int:
        """The shortest waveform this front end transforms: its centred STFT pads each side by
        reflection, which needs more than n_fft // 2 samples after pre-emphasis drops one."""
        return self.config.n_fft // 2 + 2

    def pad_to_minimum(self, wave: Tensor) -> Tensor:
        """`wave` (samples,) zero-padded at the end to `min_samples` when it is shorter."""
        if wave.shape[-1] < self.min_samples:
            return nn.functional.pad(wave, (0, self.min_samples - wave.shape[-1]))
        return wave

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of `num_samples` samples (pre-emphasis drops one sample)."""
        return (num_samples - 1) // self.config.hop_length + 1

    def _banks(self) -> Tensor:
        cfg = self.config
        if not self.training or (cfg.fmin_aug_range <= 1 and cfg.fmax_aug_range <= 1):
            return self.mel_banks
        fmin = cfg.fmin + torch.randint(cfg.fmin_aug_range, ()).item()
        fmax = self.fmax + cfg.fmax_aug_range // 2 - torch.randint(cfg.fmax_aug_range, ()).item()
        return kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, fmin, fmax).to(self.mel_banks.device)

    def _mel(self, power: Tensor) -> Tensor:
        """Mel energies of power spectra (batch, bins, frames): the mel banks as a sparse (CSR)
        matrix, since each frequency bin falls in at most two triangles; a dense product would
        multiply mostly zeros and costs about as much as the rest of the front end together."""
        banks = self._banks()
        if banks is not self.mel_banks:  # jittered banks (training): new each batch
            sparse = _csr(banks)
        else:
            if self._sparse is None or self._sparse[0] is not banks:  # once per device (.to() makes new buffers)
                self._sparse = (banks, _csr(banks))
            sparse = self._sparse[1]
        return torch.stack([torch.sparse.mm(sparse, spectrum) for spectrum in power])

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() == 1:
            waveform = waveform[None]
        if not self.training and waveform.device.type == "cpu" and waveform.shape[0] > 1:
            # One clip at a time on a CPU: a batch's STFT intermediates outgrow the caches and
            # glibc's reuse of freed blocks (each forward then maps and faults in fresh pages),
            # and ran slower per clip than single clips (BENCHMARKS.md). Each clip's transform
            # does not depend on the others, so the outputs are the batch's.
            return torch.cat([self._transform(clip[None]) for clip in waveform])
        return self._transform(waveform)

    def _transform(self, waveform: Tensor) -> Tensor:
        cfg = self.config
        waveform = waveform.float()
        emphasised = waveform[:, 1:] - cfg.preemphasis * waveform[:, :-1]
        # The centred STFT of torch.stft(center=True, pad_mode="reflect") written out (equal to it
        # up to float rounding, tested): its reflection padding (F.pad) cost several times this
        # slicing on a long row (BENCHMARKS.md).
        half = cfg.n_fft // 2
        padded = torch.cat([emphasised[:, 1:half + 1].flip(-1), emphasised, emphasised[:, -half - 1:-1].flip(-1)], -1)
        spectrum = torch.fft.rfft(padded.unfold(-1, cfg.n_fft, cfg.hop_length) * self.window)  # (batch, frames, bins)
        power = (spectrum.real.square() + spectrum.imag.square()).transpose(1, 2).contiguous()
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            mel = self._mel(power)
        logmel = mel.add_(1e-5).log_()
        if self.training:
            if cfg.freq_mask > 0:
                logmel = spec_augment_mask(logmel, cfg.freq_mask, dim=1)
            if cfg.time_mask > 0:
                logmel = spec_augment_mask(logmel, cfg.time_mask, dim=2)
        return (logmel + 4.5) / 5.0
