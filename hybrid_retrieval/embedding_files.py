"""`hybrid-retrieval embed`: embeddings of audio files or texts written to a file, resumably.

    hybrid-retrieval embed my_audio/ --checkpoint runs/3 --out audio.npy
    hybrid-retrieval embed --text captions.txt --checkpoint runs/3 --out captions.npy

The output is two files: `X.npy`, a float32 (n, d) array of L2-normalised embeddings (NumPy's own
format: `np.load`, or `np.load(..., mmap_mode="r")` without reading it all), and `X.json`, what
row i is and how the rows were made: `names` (audio: the file's id, its path relative to the
folder when one folder is embedded, as `index build` names it; text: the text itself), `paths`
(audio files, resolved), `kind`, `count`, `dim`, the checkpoint and the model's identity (as an
index records it). `read_embeddings` reads both and checks that they agree. Audio rows are the
numbers `index build` puts into an index for the same files and checkpoint (the same catalogue
embedding, without metadata), text rows those of `search` queries.

Large inputs: items are embedded `part_size` at a time, each part written atomically to
`X.npy.parts/` beside the output, with a manifest of what is being embedded (inputs, model,
settings). A killed run, started again with the same arguments, keeps the finished parts and
embeds the rest; a manifest that differs (other inputs, model or settings) starts the parts over.
When all parts are there they are copied into `X.npy` (through a memory map, so memory holds one
part) and the parts folder is removed. Why not Parquet: an embedding matrix in `.npy` loads with
NumPy alone and memory-maps, which a table of lists does not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from hybrid_retrieval.config_base import read_json_object
from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.hub import atomic_path, check_writable
from hybrid_retrieval.terminal import add_model_arguments, at_least_one, printable, window_or_default

if TYPE_CHECKING:
    from torch import Tensor

    from hybrid_retrieval.data.items import CatalogueItem
    from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")

EMBEDDINGS_FORMAT = "hybrid_retrieval.embeddings/1"
PARTS_FORMAT = "hybrid_retrieval.embedding-parts/1"


@dataclass
class Embeddings:
    """What `read_embeddings` returns: the (n, d) array, each row's name and the header."""

    array: np.ndarray
    names: list[str]
    info: dict


def sidecar(out: str | Path) -> Path:
    """The JSON file beside an embeddings file `X.npy`: `X.json`."""
    return Path(out).with_suffix(".json")


def parts_folder(out: str | Path) -> Path:
    """Where the parts of a run writing `out` are kept until it completes."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _digest(values: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()


def _start_parts(folder: Path, manifest: dict) -> None:
    """Keep `folder`'s parts if its manifest is `manifest`; otherwise start it afresh."""
    path = folder / "manifest.json"
    if path.is_file():
        try:
            if read_json_object(path, "parts manifest") == manifest:
                return
        except BadInputError:
            pass
        log.warning("%s holds parts of another run (other inputs, model or settings): starting over", folder)
        shutil.rmtree(folder)
    folder.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))


def _finished(part: Path, rows: int, dim: int) -> bool:
    """Whether `part` holds the (rows, dim) float32 array of a finished part."""
    if not part.is_file():
        return False
    try:
        array = np.load(part, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("part %s cannot be read (%s): embedding it again", part, exc)
        return False
    return array.shape == (rows, dim) and array.dtype == np.float32


def write_embeddings(out: str | Path, compute: Callable[[int, int], Tensor], names: Sequence[str], dim: int,
                     header: dict, part_size: int = 256, progress: bool = True) -> Path:
    """Write `out` (.npy) and its JSON sidecar: rows start..stop come from `compute(start, stop)`,
    `part_size` at a time, each part kept in `parts_folder(out)` until all are done (see the
    module docstring). `header` identifies the run (inputs, model, settings): parts are reused
    only by a run with the same header and names."""
    out = Path(out)
    count = len(names)
    folder = parts_folder(out)
    _start_parts(folder, {"format": PARTS_FORMAT, "names": _digest(names), "count": count, "dim": dim,
                          "part_size": part_size, "run": _digest([json.dumps(header, sort_keys=True)])})
    starts = range(0, count, part_size)
    with tqdm(total=count, desc=f"embedding {header.get('kind', 'items')}", unit="item", disable=not progress) as bar:
        for number, start in enumerate(starts):
            stop = min(start + part_size, count)
            part = folder / f"part-{number:06d}.npy"
            if not _finished(part, stop - start, dim):
                rows = compute(start, stop).float().numpy()
                with atomic_path(part) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, rows)
            bar.update(stop - start)
    sidecar(out).unlink(missing_ok=True)  # never an old sidecar beside a new array
    with atomic_path(out) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
        for number, start in enumerate(starts):
            array[start:start + part_size] = np.load(folder / f"part-{number:06d}.npy")
        array.flush()
        del array
    with atomic_path(sidecar(out)) as tmp:
        tmp.write_text(json.dumps({**header, "format": EMBEDDINGS_FORMAT, "count": count, "dim": dim,
                                   "names": list(names)}), encoding="utf-8")
    shutil.rmtree(folder)
    return out


def read_embeddings(path: str | Path, mmap: bool = False) -> Embeddings:
    """An embeddings file and its sidecar (`write_embeddings`); BadInputError naming the file when
    either is missing, damaged, or they disagree."""
    path = Path(path)
    info = read_json_object(sidecar(path), "embeddings header")
    if info.get("format") != EMBEDDINGS_FORMAT:
        raise BadInputError(f"{sidecar(path)} is not the header of hybrid_retrieval embeddings "
                            f"(format {info.get('format')!r}, expected {EMBEDDINGS_FORMAT!r})")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except FileNotFoundError as exc:
        raise BadInputError(f"{path} is missing beside its header {sidecar(path)}") from exc
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable .npy array ({exc})") from exc
    names = info.get("names")
    if array.shape != (info.get("count"), info.get("dim")) or not isinstance(names, list) or len(names) != len(array):
        raise BadInputError(f"{path} holds a {array.shape} array but its header {sidecar(path)} describes "
                            f"{info.get('count')} x {info.get('dim')} with {len(names or [])} names")
    return Embeddings(array, names, info)


def embed_audio_to_file(model: RetrievalModel, checkpoint: dict, items: Sequence[CatalogueItem], out: str | Path,
                        *, window_seconds: float | None = None, cache_dir: str | Path | None = None,
                        part_size: int = 256, progress: bool = True) -> Path:
    """Item embeddings of audio files (without metadata) into `out`; see write_embeddings."""
    from hybrid_retrieval.cache import audio_key
    from hybrid_retrieval.embedding import embed_catalogue
    from hybrid_retrieval.index.search_index import model_identity

    paths = [str(Path(item.audio_path).resolve()) for item in items]
    header = {"kind": "audio", "checkpoint": checkpoint, "model": model_identity(model),
              "window_seconds": window_seconds, "files": _digest([audio_key(p) for p in paths]), "paths": paths}

    def compute(start: int, stop: int) -> Tensor:
        return embed_catalogue(model, paths[start:stop], None, cache_dir, window_seconds=window_seconds,
                               progress=False)

    return write_embeddings(out, compute, [item.item_id for item in items], model.config.embed_dim, header,
                            part_size, progress)


def embed_texts_to_file(model: RetrievalModel, checkpoint: dict, texts: Sequence[str], out: str | Path, *,
                        part_size: int = 256, progress: bool = True) -> Path:
    """Query embeddings of texts into `out`; see write_embeddings."""
    from hybrid_retrieval.embedding import embed_queries
    from hybrid_retrieval.index.search_index import model_identity

    header = {"kind": "text", "checkpoint": checkpoint, "model": model_identity(model)}
    return write_embeddings(out, lambda start, stop: embed_queries(model, texts[start:stop], progress=False),
                            texts, model.config.embed_dim, header, part_size, progress)


def add_embed_command(sub: argparse._SubParsersAction) -> None:
    """Register `embed` on the main parser's sub-commands."""
    embed = sub.add_parser("embed", help="embeddings of audio files or texts to a .npy file (+ .json names), "
                                         "resumable")
    embed.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR", help="audio files or folders (recursive)")
    embed.add_argument("--text", default=None, metavar="TEXTS_FILE",
                       help="embed the texts of this UTF-8 file (one per line) as queries, instead of audio")
    embed.add_argument("--out", required=True, help="X.npy to write (and X.json beside it)")
    embed.add_argument("--part-size", type=at_least_one, default=256,
                       help="items per part, the unit a killed run resumes from (default 256)")
    embed.add_argument("--cache-dir", default=None, help="feature cache of the towers' outputs")
    add_model_arguments(embed)
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)


def _embed(args: argparse.Namespace) -> int:
    from hybrid_retrieval.data.catalogue import audio_inputs
    from hybrid_retrieval.index.cli import read_lines
    from hybrid_retrieval.models import load_retrieval_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if bool(args.inputs) == bool(args.text):
        raise BadInputError("give audio files or folders, or --text TEXTS_FILE (one of the two)")
    if Path(args.out).suffix != ".npy":
        raise BadInputError(f"--out {printable(args.out)}: the embeddings file must end in .npy (its names go to "
                            f"the .json beside it)")
    texts = read_lines(args.text) if args.text else None
    if texts is not None and not texts:
        raise BadInputError(f"{printable(args.text)} holds no texts (one per line)")
    items = audio_inputs(args.inputs) if texts is None else None
    count = len(texts if texts is not None else items)
    check_writable(args.out)  # before any work; the parts go beside it
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)
    model, checkpoint = load_retrieval_model(args.checkpoint, args.device)
    check_writable(args.out, need_bytes=2 * count * 4 * model.config.embed_dim)  # the parts and the output
    progress = not args.no_progress
    if texts is not None:
        out = embed_texts_to_file(model, checkpoint, texts, args.out, part_size=args.part_size, progress=progress)
    else:
        if model.uses_metadata:
            print(f"note: the checkpoint fuses {model.config.metadata!r} metadata; files are embedded from their audio "
                  f"alone", file=sys.stderr)
        window = window_or_default(args.window_seconds, model.audio_tower.default_window_seconds)
        out = embed_audio_to_file(model, checkpoint, items, args.out, window_seconds=window,
                                  cache_dir=args.cache_dir, part_size=args.part_size, progress=progress)
    print(f"embedded {count} {'texts' if texts is not None else 'files'} ({model.config.embed_dim}-d) with "
          f"{printable(checkpoint['path'])} -> {printable(out)} (+ {printable(sidecar(out).name)})")
    return 0
