"""The retrieval model: audio tower, text tower, item encoder (fusion) and query projection.

`create_model(name, pretrained=True, **overrides)` builds one from a model config (JSON files in
`hybrid_retrieval/model_configs/`, e.g. `mn04_minilm`), open_clip style. Queries and items are
embedded independently and L2-normalised; retrieval scores are cosine similarities.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import torch
from torch import Tensor, nn

import fusion
from hybrid_retrieval.audio.frontend import FrontendConfig
from hybrid_retrieval.audio.tower import AudioTower, audioset_labels, create_audio_tower
from hybrid_retrieval.config_base import StrictConfig
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.modes import eval_mode
from hybrid_retrieval.outputs import TowerOutput
from hybrid_retrieval.projection import Projection
from hybrid_retrieval.text.tower import DEFAULT_TEXT_MODEL, TextTower


@dataclass
class ModelConfig(StrictConfig):
    """Everything needed to rebuild a model's architecture (saved beside every checkpoint)."""

    audio_encoder: str = "efficientat:mn04_as"
    frontend: dict = field(default_factory=dict)  # FrontendConfig settings that differ from its defaults
    text_encoder: str = DEFAULT_TEXT_MODEL
    text_max_length: int = 32
    text_pooling: str = "mean"
    embed_dim: int = 1024
    projection: str = "linear"
    fusion: str = "none"
    fusion_options: dict = field(default_factory=dict)  # per fusion name, e.g. {"mid": {"layers": 4}}
    metadata: str = ""  # metadata kinds the items carry, e.g. "os", "cs+os" ("" = none)
    separate_metadata_encoder: bool = False  # the paper's ablation: metadata gets its own text tower
    temperature: float = 0.05
    learn_temperature: bool = False
    min_temperature: float = 0.01  # floor of a learnable temperature only (CLIP's logit-scale cap of 100)


def list_models() -> list[str]:
    """Names of the bundled model configs."""
    folder = resources.files("hybrid_retrieval.model_configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_config(name: str) -> ModelConfig:
    path = resources.files("hybrid_retrieval.model_configs").joinpath(f"{name}.json")
    if not path.is_file():
        raise BadInputError(f"unknown model config {name!r}; available: {list_models()}")
    return ModelConfig.from_dict(json.loads(path.read_text("utf-8")))


class RetrievalModel(nn.Module):
    def __init__(self, config: ModelConfig, audio_tower: AudioTower, text_tower: TextTower) -> None:
        super().__init__()
        self.config = config
        self.audio_tower = audio_tower
        self.text_tower = text_tower
        self.text_proj = Projection(text_tower.embed_dim, config.embed_dim, config.projection)
        # The metadata encoder (text tower + projection) is the query's own unless the config asks
        # for a separate copy: then the metadata gets a copy of the tower and its own projection.
        shared = not config.separate_metadata_encoder
        options = {"projection": config.projection, **config.fusion_options.get(config.fusion, {})}
        if config.fusion in fusion.FUSIONS and fusion.FUSIONS[config.fusion].uses_class_embeddings:
            options["class_embeddings"] = class_name_embeddings(text_tower, audioset_labels())
        self.item_encoder = fusion.create_fusion(
            config.fusion, audio_dim=audio_tower.embed_dim, text_dim=text_tower.embed_dim,
            embed_dim=config.embed_dim, metadata_projection=self.text_proj if shared else None, **options,
        )
        self.uses_metadata = bool(self.item_encoder.uses_metadata)
        if self.uses_metadata and not config.metadata:
            raise BadInputError(f"fusion={config.fusion!r} needs metadata: set metadata= (e.g. 'os', 'cs+os')")
        self.metadata_tower = copy.deepcopy(text_tower) if self.uses_metadata and not shared else None
        log_scale = torch.tensor(math.log(1.0 / config.temperature))
        if config.learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.clamp_temperature()
        self.frozen: tuple[str, ...] = ()  # towers set by freeze(): "audio", "text"

    # -- which tower does what, and which ones train -------------------------------------------
    @property
    def metadata_encoder(self) -> TextTower:
        """The text tower that encodes item metadata: a separate copy, or the query's own."""
        return self.metadata_tower if self.metadata_tower is not None else self.text_tower

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    def freeze(self, audio: bool = False, text: bool = False) -> RetrievalModel:
        """Set which towers are frozen (all others train): a frozen tower gets no gradients and
        stays in eval mode (batch-norm statistics, dropout) when the model trains. `text` covers
        the separate metadata tower too. The one place that rule lives; checkpoints record it."""
        self.audio_tower.requires_grad_(not audio)
        for tower in {id(t): t for t in (self.text_tower, self.metadata_encoder)}.values():
            tower.requires_grad_(not text)
        self.frozen = tuple(name for name, flag in (("audio", audio), ("text", text)) if flag)
        return self.train(self.training)

    def train(self, mode: bool = True) -> RetrievalModel:
        super().train(mode)
        if "audio" in self.frozen:
            self.audio_tower.eval()
        if "text" in self.frozen:
            self.text_tower.eval()
            self.metadata_encoder.eval()
        return self

    @property
    def cache_is_valid(self) -> bool:
        """Whether cached outputs of the pretrained towers stand for this model's towers (both
        frozen), so evaluation and indexing may read them from a feature cache."""
        return {"audio", "text"} <= set(self.frozen)

    # -- the two halves of the dual encoder -------------------------------------------------
    @property
    def logit_scale(self) -> Tensor:
        """1 / temperature. Not clamped here: a clamp inside the forward pass gives a learnable
        temperature zero gradient once it reaches the cap, so it could never come back;
        `clamp_temperature` keeps it in range after each optimiser step instead."""
        return self.log_logit_scale.exp()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep a learnable temperature at or above `min_temperature` (what open_clip does to its
        logit scale after each optimiser step). A fixed temperature is used as configured."""
        if self.config.learn_temperature:
            self.log_logit_scale.clamp_(max=math.log(1.0 / self.config.min_temperature))

    def metadata_features(self, texts: Sequence[str]) -> tuple[TowerOutput, Tensor]:
        """Encode item metadata; returns the tower output and a (batch,) mask of non-empty texts."""
        return self.metadata_encoder(texts), metadata_present(texts).to(self.device)

    def embed_items(self, audio: TowerOutput | None, metadata: TowerOutput | None = None,
                    present: Tensor | None = None) -> Tensor:
        return nn.functional.normalize(self.item_encoder(audio, metadata, present), dim=-1)

    def embed_queries(self, text: TowerOutput) -> Tensor:
        return nn.functional.normalize(self.text_proj(text.embedding), dim=-1)

    def forward(self, audio: TowerOutput | Tensor | None, text: TowerOutput | Sequence[str],
                metadata: TowerOutput | Sequence[str] | None = None,
                present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One training step's embeddings: (queries, items), both normalised.

        Each input is either a tower output (a frozen tower's cached features) or the raw input
        of a tower that trains: a waveform batch, caption strings, metadata strings.
        """
        if isinstance(audio, Tensor):
            audio = self.audio_tower(audio)
        if not isinstance(text, TowerOutput):
            text = self.text_tower(text)
        if metadata is not None and not isinstance(metadata, TowerOutput):
            metadata, present = self.metadata_features(metadata)
        return self.embed_queries(text), self.embed_items(audio, metadata, present)

    # -- convenience: raw inputs to normalised embeddings ----------------------------------
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.embed_queries(self.text_tower(texts))

    def encode_items(self, waveforms: Tensor, metadata: Sequence[str] | None = None) -> Tensor:
        """waveforms: (batch, samples) of equal length at 32 kHz; metadata: one text per item."""
        audio = self.audio_tower(waveforms) if self.item_encoder.uses_audio else None
        meta, present = (None, None)
        if self.uses_metadata:
            meta, present = self.metadata_features(metadata if metadata is not None else [""] * len(waveforms))
        return self.embed_items(audio, meta, present)

    def fingerprint(self) -> dict:
        """Identifies the towers an embedding cache or index was made with."""
        return {**self.audio_tower.fingerprint(), **self.text_tower.fingerprint()}

    # -- zero-shot classification and loading by name (open_clip / CLAP style) --------------
    def classify(self, audio: Tensor, class_names: Sequence[str], prompt: str = "{}",
                 multi_label: bool = False) -> Tensor:
        """Zero-shot classification of clips: (n_clips, n_classes) scores in `class_names`' order.

        audio: (samples,) or (n_clips, samples) waveforms of equal length at 32 kHz; each class
        name is put into `prompt` at its `{}` ("this is {} music") and embedded as a query; the
        clips are embedded as items without metadata. Scores: `zeroshot.class_probabilities`
        (a softmax over the classes at the model's temperature, or with `multi_label` one
        calibrated sigmoid per class).
        """
        from hybrid_retrieval.zeroshot import class_probabilities, prompted

        texts = prompted(class_names, prompt)
        waves = audio[None] if audio.dim() == 1 else audio
        with eval_mode(self), torch.inference_mode():
            cosines = self.encode_items(waves.to(self.device)) @ self.encode_text(texts).T
        return class_probabilities(cosines.cpu(), float(self.logit_scale), multi_label)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device = "cpu") -> RetrievalModel:
        """A model by name, in eval mode: a checkpoint or run folder (a local folder in the Hub
        layout is one), a released checkpoint, `audioset_tags`, or a Hugging Face Hub id
        ("user/repo"); see `models.load_retrieval_model`."""
        from hybrid_retrieval.models import load_retrieval_model

        return load_retrieval_model(name_or_path, device)[0]

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload hybrid_retrieval model") -> str:
        """Upload this model to a Hugging Face Hub model repository in the checkpoints' layout
        (config.json + model.safetensors; frozen pretrained towers as fingerprints); returns the
        commit's URL. See `models.push_to_hub`."""
        from hybrid_retrieval.models import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message)


def metadata_present(texts: Sequence[str]) -> Tensor:
    """(n,) bool: which items have metadata text (the others fall back to their audio)."""
    return torch.tensor([bool(t.strip()) for t in texts])


@torch.no_grad()
def class_name_embeddings(text_tower: TextTower, names: Sequence[str], batch_size: int = 128) -> Tensor:
    """(n_names, text_dim): the text tower's pooled embeddings of class names, L2-normalised,
    computed in eval mode (the fixed label embeddings of training-free fusions)."""
    with eval_mode(text_tower):
        parts = [text_tower(list(names[start:start + batch_size])).embedding
                 for start in range(0, len(names), batch_size)]
    return nn.functional.normalize(torch.cat(parts), dim=-1)


def create_model(name: str | ModelConfig = "mn04_minilm", pretrained: bool | str = True,
                 audio_weights: str | None = None, **overrides) -> RetrievalModel:
    """Build a retrieval model from a named config (or a ModelConfig), with keyword overrides.

    pretrained: True/False: load the audio tower's released weights (EfficientAT) or timm weights
    where online, or not; the text tower always loads its pretrained Hugging Face weights. A
    string loads trained weights, open_clip style: a released checkpoint's name, a checkpoint or
    run folder, or a Hugging Face Hub id (`models.load_pretrained`, which checks that they were
    trained with `name`'s towers; no overrides then).
    """
    if isinstance(pretrained, str):
        if overrides or not isinstance(name, str):
            raise BadInputError("create_model(name, pretrained=<checkpoint>) takes a config name and no overrides: "
                                "the checkpoint's own config.json defines the model")
        from hybrid_retrieval.models import load_pretrained

        return load_pretrained(name, pretrained, audio_weights=audio_weights)
    config = get_model_config(name) if isinstance(name, str) else copy.deepcopy(name)
    config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    audio = create_audio_tower(config.audio_encoder, pretrained=pretrained, weights=audio_weights,
                               frontend=FrontendConfig.from_dict(config.frontend))
    text = TextTower(config.text_encoder, max_length=config.text_max_length, pooling=config.text_pooling)
    return RetrievalModel(config, audio, text)
