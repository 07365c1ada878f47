"""Embedding text queries for a search: the query half of the index's checkpoint, as fast to
start as possible.

A text query needs the text tower and the query projection only (`query_model`). The index
records their identity, so `open_query_encoder` checks the checkpoint against the index from the
checkpoint's files (config.json and the projection's tensors; `checkpoint_query_identity`), then:

* if the cache holds an ONNX export of that query model (`<cache>/query_encoders/<identity
  hash>/`: the graph from token ids to normalised embeddings, and the tokenizer), it is run with
  ONNX Runtime and the `tokenizers` library, so neither transformers' model code nor the model's
  weights hashes are loaded: this is the cold-start path of `hybrid-retrieval search`;
* otherwise the text tower and projection are built from the checkpoint (`load_query_model`, no
  audio tower) and answer, and the export is written into the cache for the next search (once
  per checkpoint, a few seconds; only where ONNX Runtime and torch's ONNX exporter are installed,
  the `fast-search` extra).

The export is checked against the torch model on probe queries before it is kept; a cached export
that cannot be loaded is removed with a warning and made again. Indexes built before the query
identity was recorded load the whole model and check it whole, as before.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from hybrid_retrieval.errors import HybridRetrievalError
from hybrid_retrieval.fingerprint import fingerprint_hash
from hybrid_retrieval.hub import atomic_directory, cache_dir
from hybrid_retrieval.text.tower import normalize_text

if TYPE_CHECKING:
    from hybrid_retrieval.index.search_index import SearchIndex
    from hybrid_retrieval.model import RetrievalModel
    from hybrid_retrieval.query_model import QueryModel

log = logging.getLogger("hybrid_retrieval")

ENCODER_FORMAT = "hybrid_retrieval.query_encoder/1"
# Texts the export is checked on against the torch model (short, long, cut at the tower's length).
PROBES = ("a dog barks", "rain falls on a tin roof while thunder rolls in the distance and a car passes",
          " ".join(["music"] * 600))
PROBE_TOLERANCE = 1e-4  # largest difference of a probe's embedding allowed between export and torch


class QueryEncoder(Protocol):
    """What a search needs of a query model (QueryModel, OnnxQueryEncoder)."""

    max_length: int

    def encode(self, texts: Sequence[str]) -> Tensor: ...

    def truncation(self, text: str) -> tuple[int, str] | None: ...


def encoder_folder(identity: dict) -> Path:
    """Where the export of the query model with `identity` is cached."""
    return cache_dir() / "query_encoders" / fingerprint_hash(identity)


def fast_search_available() -> bool:
    """Whether ONNX Runtime (to run an export) and onnxscript (torch's exporter needs it) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript", "tokenizers"))


class OnnxQueryEncoder:
    """A cached export (see the module docstring): `encode` equals the QueryModel it was made
    from up to float rounding (checked on PROBES when it was made)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        settings = json.loads((folder / "encoder.json").read_text("utf-8"))
        if settings.get("format") != ENCODER_FORMAT:
            raise ValueError(f"format {settings.get('format')!r}, not {ENCODER_FORMAT!r}")
        self.identity, self.max_length = settings["identity"], settings["max_length"]
        self.normalize, self.pad_id = settings["normalize"], settings["pad_id"]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
        # torch's exporter optimised the graph already: ORT's basic rewrites are enough and start faster
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a CLI: no busy-waiting threads
        self.session = onnxruntime.InferenceSession(str(folder / "encoder.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()

    def _ids(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        if truncate:
            self.tokenizer.enable_truncation(self.max_length)
        else:
            self.tokenizer.no_truncation()
        return [e.ids for e in self.tokenizer.encode_batch([normalize_text(t) if self.normalize else t for t in texts])]

    def encode(self, texts: Sequence[str]) -> Tensor:
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for row, pieces in enumerate(self._ids(texts)):
            ids[row, :len(pieces)], mask[row, :len(pieces)] = pieces, 1
        return torch.from_numpy(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0])

    def truncation(self, text: str) -> tuple[int, str] | None:
        """As TextTower.truncation, with the exported tokenizer."""
        length = len(self._ids([text], truncate=False)[0])
        if length <= self.max_length:
            return None
        return length, self.tokenizer.decode(self._ids([text])[0], skip_special_tokens=True)


def cached_encoder(identity: dict) -> OnnxQueryEncoder | None:
    """The cached export of the query model with `identity`, or None. One that cannot be loaded is
    removed (with a warning naming it), so that the next search makes it again."""
    folder = encoder_folder(identity)
    if not (folder / "encoder.json").is_file():
        return None
    try:
        encoder = OnnxQueryEncoder(folder)
        if encoder.identity != identity:
            raise ValueError("it was made for another model")
        return encoder
    except Exception as exc:  # noqa: BLE001 - onnxruntime and tokenizers raise their own types for a damaged file
        log.warning("query encoder cache %s cannot be used (%s): removed, it is made again", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def export_query_encoder(model: QueryModel, identity: dict) -> Path | None:
    """Export `model` (with `identity`) into the cache with torch's ONNX exporter: token ids and
    mask of a batch of texts padded to the tower's max_length in, normalised query embeddings
    out. Returns the folder, or None (with a warning saying why) when the export fails, cannot
    be written or does not match the model on PROBES: a search never fails for want of it."""
    tower = model.text_tower
    length, pad_id = tower.max_length, tower.tokenizer.pad_token_id

    def padded(texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        batch = tower.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return (torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad_id),
                torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=0))

    folder = encoder_folder(identity)
    model = model.cpu().eval()
    batch = torch.export.Dim("batch")
    try:
        with atomic_directory(folder) as tmp, warnings.catch_warnings(), torch.no_grad(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's notes on the traced graph, printed or warned
            torch.onnx.export(model, padded(PROBES[:2]), str(tmp / "encoder.onnx"), dynamo=True, verbose=False,
                              input_names=["input_ids", "attention_mask"], output_names=["query_embedding"],
                              dynamic_shapes=({0: batch}, {0: batch}), external_data=False)
            tower.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "encoder.json").write_text(json.dumps({
                "format": ENCODER_FORMAT, "identity": identity, "max_length": length, "normalize": tower.normalize,
                "pad_id": pad_id}, indent=1), "utf-8")
            try:
                difference = (OnnxQueryEncoder(tmp).encode(PROBES) - model.encode(PROBES)).abs().max().item()
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: an export it cannot run
                raise _NotKept(f"ONNX Runtime cannot run it: {exc}") from exc
            if difference > PROBE_TOLERANCE:
                raise _NotKept(f"it differs from the model by {difference:.2g} on probe queries")
    except (_NotKept, OSError, HybridRetrievalError, torch.onnx.errors.OnnxExporterError) as exc:
        log.warning("no query encoder saved for this checkpoint (%s): its searches load the text tower", exc)
        return None
    return folder


class _NotKept(Exception):
    """An export that does not match its model: raised inside atomic_directory, which discards it."""


def open_query_encoder(index: SearchIndex, checkpoint: str | Path | None = None, device: str = "auto",
                       model: RetrievalModel | None = None) -> QueryEncoder:
    """The query encoder of `index` (a SearchIndex) with its checkpoint (or `checkpoint`, if it has
    moved), checked against the index: IncompatibleModelError naming what differs otherwise.
    An ONNX export from the cache where one is (and `device` is auto or cpu), else the query half
    of the checkpoint (its export is then cached for the next search). `model`: the whole model
    of that checkpoint, if the caller has loaded it and checked it against the index (`check_model`):
    where the whole model is needed (a training-free model, an index from before query identities
    were recorded), its query half is used instead of loading the model again."""
    from hybrid_retrieval.devices import resolve_device
    from hybrid_retrieval.models import TRAINING_FREE, checkpoint_folder, load_retrieval_model
    from hybrid_retrieval.query_model import QueryModel
    from hybrid_retrieval.training.checkpoint import checkpoint_query_identity, load_query_model

    spec = str(checkpoint or index.checkpoint)
    torch_device = resolve_device(device)
    directory = None if spec in TRAINING_FREE else checkpoint_folder(spec)[0]
    identity = checkpoint_query_identity(directory) if directory and index.query_identity is not None else None
    if identity is None:  # a training-free model (no files), or an index from before the query identity was
        if model is None:  # recorded: the whole model, checked whole
            model, _ = load_retrieval_model(spec, torch_device)
            index.check_model(model)
        return QueryModel.of(model)
    index.check_query_model(identity)
    fast = device in ("auto", "cpu") and fast_search_available()
    if fast and (encoder := cached_encoder(identity)) is not None:
        return encoder
    model, _ = load_query_model(directory, device=torch_device)
    if fast:
        export_query_encoder(model, identity)
        model.to(torch_device)
    return model
