"""Training pairs and where their features come from.

A training example is one (clip, caption) pair; every caption of every clip is one pair per
epoch. A frozen tower's outputs come from the feature cache (computed once); a trainable
tower runs on the raw input: random `clip_seconds` crops of the waveform, the caption strings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hybrid_retrieval.audio.io import SAMPLE_RATE, audio_info, load_audio
from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.embedding import audio_outputs, require_outputs, text_outputs
from hybrid_retrieval.model import RetrievalModel, metadata_present
from hybrid_retrieval.outputs import TowerOutput


def random_crop(path: str | Path, length: int, generator: torch.Generator,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A random `length`-sample window of an audio file, zero-padded at the end when the file is
    shorter. The start is drawn from the file's length in its header and only the window is read
    (`load_audio`'s offset and duration), so a crop of an hour-long file costs a crop's reading."""
    total = audio_info(path).length(sample_rate)
    if total <= length:
        wave = load_audio(path, sample_rate)
        return np.pad(wave, (0, length - len(wave)))
    start = int(torch.randint(total - length + 1, (1,), generator=generator))
    return load_audio(path, sample_rate, offset=start / sample_rate, duration=length / sample_rate)


class PairDataset(Dataset):
    """Index -> {pair, item, waveform (only when the audio tower trains)}.

    The crop of pair i in epoch e is drawn from a generator seeded with (seed, epoch, i), so the
    data do not depend on worker count and a resumed run sees the same crops.
    """

    def __init__(self, items: list[CatalogueItem], owners: list[int], clip_samples: int | None,
                 seed: int = 0) -> None:
        self.items, self.owners, self.clip_samples, self.seed = items, owners, clip_samples, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.owners)

    def __getitem__(self, index: int) -> dict:
        out = {"pair": index, "item": self.owners[index]}
        if self.clip_samples is not None:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF)
            wave = random_crop(self.items[self.owners[index]].audio_path, self.clip_samples, generator)
            out["waveform"] = torch.from_numpy(wave)
        return out


def collate_pairs(examples: list[dict]) -> dict:
    batch = {"pair": torch.tensor([e["pair"] for e in examples]), "item": torch.tensor([e["item"] for e in examples])}
    if "waveform" in examples[0]:
        batch["waveform"] = torch.stack([e["waveform"] for e in examples])
    return batch


class FeatureProvider:
    """The model's inputs for a batch of pairs: cached tower outputs for the towers the model has
    frozen (`RetrievalModel.freeze`), raw inputs (waveforms, strings) for towers that train;
    `RetrievalModel.forward` takes either."""

    def __init__(self, model: RetrievalModel, items: list[CatalogueItem], captions: list[str],
                 cache_dir: str | None, progress: bool = True) -> None:
        self.model, self.captions = model, captions
        freeze_audio, freeze_text = "audio" in model.frozen, "text" in model.frozen
        kinds = model.config.metadata
        self.metadata_texts = [item.metadata_text(kinds) for item in items] if model.uses_metadata else None
        self.audio = self.caption_feats = self.meta_feats = None
        if freeze_audio and model.item_encoder.uses_audio:
            paths = [item.audio_path for item in items]
            self.audio = require_outputs(audio_outputs(model.audio_tower, paths, cache_dir, progress=progress), paths)
        if freeze_text:
            self.caption_feats = text_outputs(model.text_tower, captions, cache_dir, progress=progress)
            if self.metadata_texts is not None:
                self.meta_feats = text_outputs(model.metadata_encoder, self.metadata_texts, cache_dir, keep_tokens=True,
                                               progress=progress)

    @property
    def needs_waveforms(self) -> bool:
        return self.model.item_encoder.uses_audio and "audio" not in self.model.frozen

    def __call__(self, batch: dict, device: torch.device) -> dict:
        items, pairs = batch["item"].tolist(), batch["pair"].tolist()
        inputs: dict = {"audio": None, "metadata": None, "present": None}
        if self.model.item_encoder.uses_audio:
            if self.audio is not None:
                inputs["audio"] = TowerOutput.collate([self.audio[i] for i in items]).to(device)
            else:
                inputs["audio"] = batch["waveform"].to(device)
        if self.caption_feats is not None:
            inputs["text"] = TowerOutput.collate([self.caption_feats[p] for p in pairs]).to(device)
        else:
            inputs["text"] = [self.captions[p] for p in pairs]
        if self.metadata_texts is not None:
            texts = [self.metadata_texts[i] for i in items]
            if self.meta_feats is not None:
                inputs["metadata"] = TowerOutput.collate([self.meta_feats[i] for i in items]).to(device)
                inputs["present"] = metadata_present(texts).to(device)
            else:
                inputs["metadata"] = texts
        return inputs
