"""Query by example, per condition: "tracks like this one, in tempo" (or genre, mood, ...).

    search = SimilaritySearch.from_checkpoint("results/disentangled/csn_track", catalog="my_music/")
    for match in search.query("song.wav", condition="tempo", top=10):
        print(match.score, match.path)
    search.catalogue.save("my_music.catalogue")   # reuse: catalog="my_music.catalogue"

A catalogue is a folder's audio files (searched recursively; unreadable files are skipped with a
warning) embedded by the model: each file is the mean embedding of the non-overlapping 3-s
segments covering it, so files of any length work. Scores are cosine similarities in the
condition's subspace ("all": the mean over conditions). A query file that is itself in the
catalogue is left out of its own results.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hybrid_retrieval.devices import resolve_device
from hybrid_retrieval.disentangled.checkpoint import find_model, load_model, model_fingerprint
from hybrid_retrieval.disentangled.features import FeatureSource, TowerTokens, segment_frames
from hybrid_retrieval.disentangled.model import ALL, ConditionalSimilarityNet, embed_tracks
from hybrid_retrieval.errors import BadInputError, IncompatibleModelError
from hybrid_retrieval.tensorfile import check_rows, json_tensor, load_tensor_file, save_tensor_file, tensor_json
from hybrid_retrieval.terminal import readable_file

CATALOGUE_FORMAT = "hybrid_retrieval.disentangled.catalogue/1"
# Files longer than this go through the tower in windows (bounds memory on long recordings).
WINDOW_SECONDS = 60.0


@dataclass
class Match:
    path: str
    score: float


@dataclass
class Catalogue:
    """Track embeddings (n, embed_dim, before masking) of audio files, and the model that made them."""

    embeddings: Tensor
    paths: list[str]
    fingerprint: str

    def save(self, path: str | Path) -> Path:
        """Write one file atomically (`tensorfile`: safetensors with a JSON header)."""
        return save_tensor_file(path, {"embeddings": self.embeddings.float(), "paths": json_tensor(self.paths)},
                                {"format": CATALOGUE_FORMAT, "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        """A file `save` wrote; BadInputError naming it if it is damaged or its parts disagree."""
        header, tensors = load_tensor_file(path, CATALOGUE_FORMAT, "similarity catalogue")
        try:
            paths = tensor_json(tensors["paths"])
            check_rows(tensors["embeddings"], {"paths": paths})
            if not isinstance(header.get("fingerprint"), str):
                raise BadInputError("its header has no model fingerprint")
            return cls(tensors["embeddings"], paths, header["fingerprint"])
        except KeyError as exc:
            raise BadInputError(f"{path} is a damaged similarity catalogue: {exc} is missing") from exc
        except (BadInputError, ValueError) as exc:  # ValueError: the paths are not UTF-8 JSON
            raise BadInputError(f"{path} is a damaged similarity catalogue: {exc}") from exc


class SimilaritySearch:
    """A model, its feature source and (optionally) a catalogue to search."""

    def __init__(self, model: ConditionalSimilarityNet, source: FeatureSource, cache_dir: str | Path | None = None,
                 catalogue: Catalogue | None = None) -> None:
        self.model = model.eval()
        self.source = source
        self.cache_dir = cache_dir
        self.fingerprint = model_fingerprint(model, source)
        self.catalogue = catalogue
        self.checkpoint: Path | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, catalog: str | Path | None = None,
                        cache_dir: str | Path | None = None, weights: str | None = None,
                        progress: bool = False, device: str = "cpu") -> SimilaritySearch:
        """Load a saved model (None: the default, see checkpoint.default_checkpoint) and, if given,
        a catalogue: a folder to embed or a saved catalogue file. cache_dir: feature cache of the
        tower's outputs (reused when a folder is embedded again); device: where the audio tower
        of a tower-token model runs (the similarity head is small and stays on the CPU)."""
        model, source, _config = load_model(checkpoint, weights, window_seconds=WINDOW_SECONDS)
        device = resolve_device(device)
        if isinstance(source, TowerTokens):
            source.tower.to(device)
        search = cls(model, source, cache_dir)
        search.checkpoint = find_model(checkpoint).resolve()
        if catalog is not None:
            search.catalogue = search.load_catalogue(catalog, progress)
        return search

    def embed(self, paths: list[str | Path], progress: bool = False) -> Tensor:
        """(n, embed_dim) track embeddings of audio files."""
        sequences = self.source.sequences(paths, self.cache_dir, progress=progress)
        return embed_tracks(self.model, sequences, segment_frames(self.model.config.segment_seconds,
                                                                  self.source.frame_seconds))

    def load_catalogue(self, catalog: str | Path, progress: bool = False) -> Catalogue:
        """A saved catalogue file (checked against this model) or a folder of audio, embedded."""
        path = Path(catalog)
        if path.is_file():
            catalogue = Catalogue.load(path)
            if catalogue.fingerprint != self.fingerprint:
                raise IncompatibleModelError(f"catalogue {path} was embedded by another model ({catalogue.fingerprint}, this one "
                                 f"is {self.fingerprint}); embed the folder again with this checkpoint")
            return catalogue
        if not path.is_dir():
            raise BadInputError(f"--catalog {catalog}: neither a folder of audio nor a catalogue file")
        from hybrid_retrieval.data.catalogue import load_catalogue

        files = [str(item.audio_path.resolve()) for item in load_catalogue(path)]
        if not files:
            raise BadInputError(f"no readable audio files in {path}")
        return Catalogue(self.embed(files, progress), files, self.fingerprint)

    def query(self, audio: str | Path, condition: str = ALL, top: int = 10) -> list[Match]:
        """The catalogue's `top` tracks most similar to an audio file in one condition (or "all")."""
        if self.catalogue is None:
            raise BadInputError("no catalogue to search: pass catalog= to from_checkpoint or set .catalogue")
        if top < 1:
            raise BadInputError(f"top must be at least 1, not {top}")
        if condition != ALL:
            self.model.condition_index(condition)  # unknown names fail before any audio is read
        query = str(readable_file(audio, "query audio file").resolve())
        scores = self.model.similarity(self.embed([query]), self.catalogue.embeddings, condition)[0]
        order = [i for i in torch.argsort(scores, descending=True).tolist() if self.catalogue.paths[i] != query]
        return [Match(self.catalogue.paths[i], float(scores[i])) for i in order[:top]]
