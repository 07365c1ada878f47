"""`hybrid-retrieval predict`: a checkpoint's rankings of an audio folder for a file of captions, in
the layout DCASE language-based audio retrieval submissions have used since 2022.

    hybrid-retrieval predict --checkpoint runs/3 --audio data/eval_audio --queries retrieval_captions.csv \
        --out predictions.csv --top 16 --scores scores.csv

The queries are a UTF-8 CSV with a `caption` (or `query`) column, one query per row. The output
is a CSV `caption,fname_1,...,fname_k`: each query's k best file names (ids: the path relative to
the folder), best first, one row per query in the input's order; `--scores` also writes the full
query x file score matrix (`caption,<file names...>`). Ties are ranked by file order, so each
row's fname_1 is the first file with the row's highest score. Both files are written to a
temporary file and renamed. Hybrid checkpoints fuse each file's metadata from `--metadata` (a
Clotho-layout CSV, as for `index build`).

The handler imports the model code when it runs, so that building the command line's parser
stays cheap.
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_retrieval.data.items import CatalogueItem
from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.hub import atomic_path, check_writable
from hybrid_retrieval.terminal import at_least_one

if TYPE_CHECKING:
    from hybrid_retrieval.model import RetrievalModel

log = logging.getLogger("hybrid_retrieval")

QUERY_COLUMNS = ("caption", "query")


def read_queries(path: str | Path) -> list[str]:
    """The queries of a UTF-8 CSV: its `caption` column, else its `query` column, in file order.
    An empty query raises one BadInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"queries file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            column = next((c for c in QUERY_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise BadInputError(f"{path}: no caption or query column (header: {reader.fieldnames})")
            queries = []
            for row in reader:
                if not (row[column] or "").strip():
                    raise BadInputError(f"{path}: line {reader.line_num}: empty {column}")
                queries.append(row[column])
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not queries:
        raise BadInputError(f"{path}: no queries")
    return queries


def ranking(scores: Tensor, top: int) -> Tensor:
    """(n_queries, min(top, n_items)) item indices by descending score, ties by index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]


def write_top_k(path: str | Path, queries: Sequence[str], ids: Sequence[str], scores: Tensor, top: int) -> None:
    """The submission file: `caption,fname_1,...,fname_k`, one row per query (atomically)."""
    order = ranking(scores, top).tolist()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption"] + [f"fname_{k}" for k in range(1, len(order[0]) + 1)])
        writer.writerows([query] + [ids[i] for i in row] for query, row in zip(queries, order))


def write_scores(path: str | Path, queries: Sequence[str], ids: Sequence[str], scores: Tensor) -> None:
    """Every score: `caption,<file names...>`, one row per query (atomically). Scores are written
    with 9 significant digits, which gives back the float32 value exactly."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", *ids])
        writer.writerows([query] + [f"{value:.9g}" for value in row] for query, row in zip(queries, scores.tolist()))


def score_catalogue(model: RetrievalModel, items: Sequence[CatalogueItem], queries: Sequence[str],
                    progress: bool = True) -> Tensor:
    """(n_queries, n_items) cosine scores of `queries` against catalogue items, the items fused
    with their metadata for hybrid models."""
    from hybrid_retrieval.embedding import embed_catalogue, embed_queries

    kinds = model.config.metadata if model.uses_metadata else ""
    metadata = [item.metadata_text(kinds) for item in items] if kinds else None
    if metadata is not None and not any(metadata):
        log.warning("the checkpoint fuses %r metadata but no file has any (pass --metadata): files are embedded "
                    "from their audio alone", kinds)
    items_emb = embed_catalogue(model, [item.audio_path for item in items], metadata, progress=progress)
    return embed_queries(model, queries, progress=progress) @ items_emb.T


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    """Register `predict` on the main parser's sub-commands."""
    predict = sub.add_parser("predict", help="top-k file names per caption for a DCASE submission (and all scores)")
    predict.add_argument("--checkpoint", required=True,
                         help="checkpoint or run directory (its latest), a released checkpoint, audioset_tags "
                              "(training-free) or a Hugging Face Hub id")
    predict.add_argument("--audio", required=True, help="folder of the audio files to rank (searched recursively)")
    predict.add_argument("--queries", required=True, help="UTF-8 CSV with a caption (or query) column")
    predict.add_argument("--out", required=True, help="CSV to write: caption,fname_1,...,fname_k")
    predict.add_argument("--top", type=at_least_one, default=16, help="file names per query (default 16)")
    predict.add_argument("--scores", default=None, help="also write every score: CSV caption,<file names...>")
    predict.add_argument("--metadata", default=None,
                         help="metadata CSV for hybrid checkpoints (Clotho layout: file_name and any of keywords, "
                              "closed_tags, description)")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    predict.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from hybrid_retrieval.data.catalogue import load_catalogue
    from hybrid_retrieval.index.cli import open_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for output in filter(None, (args.out, args.scores)):
        check_writable(output)  # before any work
    if not Path(args.audio).is_dir():
        raise NotFoundError(f"audio folder not found: {args.audio}")
    queries = read_queries(args.queries)
    model, checkpoint = open_checkpoint(args.checkpoint, args.device)
    items = load_catalogue(args.audio, args.metadata)
    if not items:
        raise BadInputError(f"no audio files under {args.audio}")
    scores = score_catalogue(model, items, queries)
    ids = [item.item_id for item in items]
    write_top_k(args.out, queries, ids, scores, args.top)
    if args.scores:
        write_scores(args.scores, queries, ids, scores)
    print(f"ranked {len(items)} files for {len(queries)} queries with {checkpoint['path']}: top {min(args.top, len(ids))} "
          f"-> {args.out}" + (f", all scores -> {args.scores}" if args.scores else ""))
    return 0
