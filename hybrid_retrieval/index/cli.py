"""`hybrid-retrieval index build|info|add|remove` and `hybrid-retrieval search`: embed a catalogue
once, search it often.

    hybrid-retrieval index build AUDIO_DIR_OR_DATASET --checkpoint runs/1 --out catalogue.index
    hybrid-retrieval search catalogue.index "a dog barks in the rain" --top 10 [--filter tag=rain]
    hybrid-retrieval index add catalogue.index new_clips/ one.wav
    hybrid-retrieval index remove catalogue.index old.wav

AUDIO_DIR_OR_DATASET is a folder (its audio files, searched recursively) or a dataset split
DATASET:ROOT:SPLIT such as synthmusic:data/synthmusic:evaluation; see data.catalogue.
The handlers import the model code when they run, so that building the parser (which every
sub-command does, `tag` included) stays as cheap as it was.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

from hybrid_retrieval.errors import BadInputError, NotFoundError
from hybrid_retrieval.terminal import (
    at_least_one,
    at_least_zero,
    check_queries,
    printable,
    readable_file,
    recall,
    window_length,
)


def add_index_commands(sub: argparse._SubParsersAction) -> None:
    """Register `index` (build, info, add, remove) and `search` on the main parser's sub-commands."""
    index = sub.add_parser("index", help="build or inspect a search index of an audio catalogue")
    actions = index.add_subparsers(dest="index_command", required=True)

    build = actions.add_parser("build", help="embed a folder or dataset split with a checkpoint into an index file")
    build.add_argument("source", metavar="AUDIO_DIR_OR_DATASET",
                       help="a folder of audio files (recursive), or DATASET:ROOT:SPLIT, "
                            "e.g. synthmusic:data/synthmusic:evaluation or clotho:/data/clotho:evaluation")
    build.add_argument("--checkpoint", required=True,
                       help="checkpoint or run directory (its latest), a released checkpoint, audioset_tags "
                            "(training-free) or a Hugging Face Hub id")
    build.add_argument("--out", required=True, help="index file to write (replaced atomically)")
    build.add_argument("--metadata", default=None,
                       help="metadata CSV for hybrid checkpoints: a file_name column and any of keywords "
                            "(';'-separated), closed_tags, description (Clotho layout)")
    build.add_argument("--approximate", choices=["ivf", "ivfpq", "hnsw"], default=None,
                       help="also build an approximate FAISS index (for large catalogues); search uses it. "
                            "ivfpq: compressed codes in memory, float16 vectors on disk to re-rank with")
    build.add_argument("--backend", choices=["milvus"], default=None,
                       help="search in a Milvus vector database instead (vectors, names, tags, descriptions)")
    build.add_argument("--uri", default=None,
                       help="with --backend milvus: a server (http://host:19530) or a Milvus Lite file (*.db)")
    build.add_argument("--collection", default=None,
                       help="with --backend milvus: the collection (default: from --out's name; replaced)")
    build.add_argument("--milvus-index", default="FLAT", choices=["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"],
                       help="with --backend milvus: Milvus's vector index (default FLAT, exact)")
    build.add_argument("--target-recall", type=recall, default=0.95,
                       help="recall@10 against exact search the approximate index is tuned to (default 0.95)")
    build.add_argument("--recall-queries", default=None,
                       help="text file of example queries, one per line, to measure the approximate index's "
                            "recall on (default: the dataset's captions, else catalogue items as queries)")
    build.add_argument("--cache-dir", default=None, help="feature cache of the towers' outputs (reused by rebuilds)")
    build.add_argument("--window-seconds", type=window_length, default=None,
                       help="embed longer clips as the mean of windows of this length, read one at a time "
                            "(default: the audio model's training clip length, 10 s; 0: whole clips)")
    build.add_argument("--workers", type=at_least_zero, default=None,
                       help="processes that decode and resample audio ahead of the audio tower (default: the "
                            "cores less two, at most 8; 0: read by a thread of the main process)")
    build.add_argument("--shard-items", type=at_least_one, default=1024,
                       help="items per shard of a build under torchrun (the unit a killed build resumes from)")
    build.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    build.set_defaults(func=_build)

    info = actions.add_parser("info", help="what an index holds and how it was built")
    info.add_argument("index", help="index file")
    info.add_argument("--json", action="store_true", help="print the index's header as JSON")
    info.set_defaults(func=_info)

    add = actions.add_parser("add", help="embed more audio files into an index (the file is replaced atomically)")
    add.add_argument("index", help="index file")
    add.add_argument("sources", nargs="+", metavar="FILE_OR_DIR",
                     help="audio files, or folders (recursive); named relative to the index's folder when inside it")
    add.add_argument("--checkpoint", default=None,
                     help="the index's checkpoint, if it has moved (another model is refused)")
    add.add_argument("--metadata", default=None, help="metadata CSV for hybrid checkpoints (as index build)")
    add.add_argument("--cache-dir", default=None, help="feature cache of the towers' outputs")
    add.add_argument("--workers", type=at_least_zero, default=None,
                     help="audio reader processes, as index build's (default: the cores less two, at most 8)")
    add.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    add.set_defaults(func=_add)

    remove = actions.add_parser("remove", help="remove items from an index (the file is replaced atomically)")
    remove.add_argument("index", help="index file")
    remove.add_argument("names", nargs="+", metavar="NAME", help="item names, as search prints them")
    remove.set_defaults(func=_remove)

    search = sub.add_parser("search", help="rank an index's items for text queries or example clips")
    search.add_argument("index", help="index file (from `hybrid-retrieval index build`)")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="one or more text queries")
    search.add_argument("--audio", action="append", default=[], metavar="CLIP",
                        help="an example clip to rank the catalogue by (query by example; repeatable): the clip is "
                             "embedded as a catalogue item of audio alone, and itself left out of its results")
    search.add_argument("--top", type=at_least_one, default=10, help="results per query (default 10)")
    search.add_argument("--json", action="store_true", help="one JSON object per query and line")
    search.add_argument("--checkpoint", default=None,
                        help="the index's checkpoint, if it has moved (verified against the index)")
    search.add_argument("--exact", action="store_true", help="exact search even if the index has an approximate part")
    search.add_argument("--filter", default=None, metavar="FILTER",
                        help="only items matching: tag=rain, name=x.wav, name~dog, description~dog; "
                             "comma-separated clauses must all hold")
    search.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    search.set_defaults(func=_search)


def open_checkpoint(checkpoint: str, device: str):
    """(model in eval mode, {"path", "epoch", "step"}) of a checkpoint or run directory, a released
    checkpoint, `audioset_tags` or a Hugging Face Hub id (`models.load_retrieval_model`)."""
    from hybrid_retrieval.models import load_retrieval_model

    return load_retrieval_model(checkpoint, device)


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    path = readable_file(path)
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{printable(path)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _build(args: argparse.Namespace) -> int:
    from hybrid_retrieval import distributed

    sharded = distributed.init_from_env()  # under torchrun: each rank embeds its shards
    try:
        return _build_index(args, sharded)
    finally:
        if sharded:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _build_index(args: argparse.Namespace, sharded: bool) -> int:
    from hybrid_retrieval import distributed
    from hybrid_retrieval.audio.reader import DEFAULT_WORKERS
    from hybrid_retrieval.data.catalogue import load_catalogue
    from hybrid_retrieval.hub import check_writable, save_or_rescue
    from hybrid_retrieval.index import build_index, save_index
    from hybrid_retrieval.index.sharded import build_index_sharded, shard_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.backend == "milvus") != bool(args.uri) or (args.backend and args.approximate):
        raise BadInputError("--backend milvus takes --uri (and no --approximate); --uri needs --backend milvus")
    main = distributed.is_main_process()
    check_writable(args.out)  # the outputs are checked before anything is loaded or embedded
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)
    if sharded:
        check_writable(shard_folder(args.out), directory=True)
    if args.backend:
        from hybrid_retrieval.index.backends.milvus_backend import resolve_uri

        args.uri = resolve_uri(args.uri)
    model, checkpoint = open_checkpoint(args.checkpoint, args.device)
    window_seconds = model.audio_tower.default_window_seconds if args.window_seconds is None else args.window_seconds
    items = recall_queries = None
    if main:  # the other ranks of a sharded build receive the catalogue from rank 0
        items = load_catalogue(args.source, args.metadata)
        recall_queries = read_lines(args.recall_queries) if args.recall_queries else None
        # about what the index file will take: the float32 embeddings and each item's names
        check_writable(args.out, need_bytes=len(items) * (4 * model.config.embed_dim + 512))
        if args.metadata and not model.uses_metadata:
            print(f"note: the checkpoint is content-only (fusion={model.config.fusion!r}); --metadata is not used",
                  file=sys.stderr)
    options = {"source": args.source, "approximate": args.approximate, "target_recall": args.target_recall,
               "recall_queries": recall_queries, "cache_dir": args.cache_dir, "window_seconds": window_seconds or None,
               "workers": DEFAULT_WORKERS if args.workers is None else args.workers}
    if sharded:
        index = build_index_sharded(model, items, checkpoint, args.out, shard_items=args.shard_items, **options)
        if index is None:  # not rank 0: its shards are written
            return 0
    else:
        index = build_index(model, items, checkpoint, **options)
    if args.backend:
        index.use_backend("milvus", uri=args.uri, collection=args.collection or _collection_name(args.out),
                          index_type=args.milvus_index)
    save_or_rescue(lambda path: save_index(index, path), args.out, f"the index of {len(index)} embedded items")
    if sharded:
        shutil.rmtree(shard_folder(args.out), ignore_errors=True)
    print(f"indexed {len(index)} items ({index.info['dim']}-d) from {printable(args.source)} with "
          f"{printable(checkpoint['path'])} -> {printable(args.out)}")
    _print_search(index.info["search"])
    return 0


def _collection_name(index_file: str) -> str:
    """A Milvus collection name from an index file's name: letters, digits and underscores."""
    name = re.sub(r"\W", "_", Path(index_file).stem, flags=re.ASCII)
    return name if re.match(r"[A-Za-z_]", name) else f"index_{name}"


def _print_search(settings: dict) -> None:
    if settings["backend"] == "torch":
        print("search: exact")
        return
    if settings["backend"] == "milvus":
        recall = (f", recall@10 {settings['recall@10']:.3f} against exact search on "
                  f"{settings['recall_queries']['count']} {settings['recall_queries']['kind']}"
                  if "recall@10" in settings else " (exact)")
        print(f"search: Milvus collection {printable(settings['collection'])} at {printable(settings['uri'])}, "
              f"{settings['index_type']} index{recall}")
        return
    if settings["kind"] == "ivfpq":
        nprobe, rerank = settings["value"]
        print(f"approximate: {settings['factory']} with nprobe={nprobe}, re-ranking {rerank}k candidates: "
              f"recall@10 {settings['recall@10']:.3f} against exact search on {settings['recall_queries']['count']} "
              f"{settings['recall_queries']['kind']} (target {settings['target_recall']})")
        return
    print(f"approximate: {settings['factory']} with {settings['parameter']}={settings['value']}: "
          f"recall@10 {settings['recall@10']:.3f} against exact search on {settings['recall_queries']['count']} "
          f"{settings['recall_queries']['kind']} (target {settings['target_recall']})")


def _info(args: argparse.Namespace) -> int:
    from hybrid_retrieval.index.store import HEADER_FIELDS, load_index

    info = load_index(args.index, require=tuple(HEADER_FIELDS)).info
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    checkpoint = info["checkpoint"]
    print(f"{printable(args.index)}: {info['size']} items, {info['dim']}-d, built {printable(info['created'])} "
          f"from {printable(info['source'])}")
    print(f"checkpoint: {printable(checkpoint['path'])} (epoch {checkpoint.get('epoch')}, "
          f"step {checkpoint.get('step')}), "
          f"weights sha256 {info['model']['weights'][:12]}")
    kinds = info["embedding"]["metadata_kinds"]
    print(f"items: audio{f' + metadata ({kinds})' if kinds else ' only'}")
    _print_search(info["search"])
    return 0


def _search(args: argparse.Namespace) -> int:
    from hybrid_retrieval.index.filters import ItemFilter
    from hybrid_retrieval.index.store import load_index

    if args.audio and args.queries:
        raise BadInputError("give text queries or --audio clips, not both")
    if not args.audio and not args.queries:
        raise BadInputError("give one or more text queries, or --audio CLIP")
    check_queries(args.queries)
    where = ItemFilter.parse(args.filter) if args.filter is not None else None
    clips = [readable_file(clip, "audio file") for clip in args.audio]
    index = load_index(args.index, require=("model", "checkpoint"))
    try:
        index.query_identity  # noqa: B018 - read here, so that a damaged one is named with the file
    except BadInputError as exc:
        raise BadInputError(f"{args.index} is a damaged index: {exc}") from exc
    checkpoint = _checkpoint_of(index, args.checkpoint)
    if clips:
        return _search_audio(args, index, checkpoint, clips, where)
    from hybrid_retrieval.index.query_encoder import open_query_encoder

    encoder = open_query_encoder(index, checkpoint, args.device)
    for number, query in enumerate(args.queries, 1):
        if cut := encoder.truncation(query):
            print(f"warning: query {number} is {cut[0]} word pieces long; the text tower reads the first "
                  f"{encoder.max_length} of them: {printable(cut[1])!r}", file=sys.stderr)
    scores, rows = index.search(encoder.encode(args.queries), args.top, exact=args.exact, filter=where)
    for query, row_scores, row_ids in zip(args.queries, scores, rows):
        _print_results(index, "query", query, row_scores, row_ids, args.json)
    return 0


def _checkpoint_of(index, given: str | None) -> str:
    """What the index's model is loaded from: its checkpoint (a folder, a released name, a Hub id
    or a training-free model's name), or `given` (NotFoundError saying to pass --checkpoint when
    the index's has moved)."""
    from hybrid_retrieval.models import TRAINING_FREE, checkpoint_folder

    spec = str(given or index.checkpoint)
    if spec in TRAINING_FREE:
        return spec
    try:
        return str(checkpoint_folder(spec)[0])
    except NotFoundError as exc:
        if given:
            raise
        raise NotFoundError(f"{exc} (the index's checkpoint has moved? pass --checkpoint)") from exc


def _index_model(index, checkpoint: str, device: str):
    """The whole model of `index` (audio tower and item encoder), loaded from `checkpoint` and
    refused unless it is the model that embedded the index's items."""
    model, _ = open_checkpoint(checkpoint, device)
    index.check_model(model)
    return model


def _search_audio(args: argparse.Namespace, index, checkpoint: str, clips: list[Path], where) -> int:
    """Query by example: the whole model is loaded and checked."""
    model = _index_model(index, checkpoint, args.device)
    for clip, given in zip(clips, args.audio):
        scores, rows = index.search_audio(model, clip, args.top, exact=args.exact, filter=where)
        _print_results(index, "audio", given, scores, rows, args.json)
    return 0


def _print_results(index, kind: str, query: str, scores, rows, as_json: bool) -> None:
    hits = [{"rank": rank, "score": round(score, 4), "id": index.ids[row], "path": index.paths[row]}
            for rank, (score, row) in enumerate(((s, r) for s, r in zip(scores.tolist(), rows.tolist()) if r >= 0), 1)]
    if as_json:
        print(json.dumps({kind: query, "results": hits}))
        return
    print(f"{printable(query)!r}" if kind == "query" else f"like {printable(query)}:")
    print(f"  {'rank':>4}  {'score':>6}  item")
    for hit in hits:
        print(f"  {hit['rank']:>4}  {hit['score']:6.3f}  {printable(hit['id'])}")


def files_to_add(sources: list[str], index_source: str, metadata_csv: str | None = None) -> list:
    """Catalogue items of audio files and folders to add to an index: named by their path relative
    to the index's source folder when inside it (as `index build` named its items), else relative
    to the folder given, or by file name; unusable files are skipped with a warning."""
    from hybrid_retrieval.data.catalogue import load_catalogue, usable_items
    from hybrid_retrieval.data.items import CatalogueItem

    base = Path(index_source).resolve() if Path(index_source).is_dir() else None
    items = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = load_catalogue(path, metadata_csv)
        else:
            readable_file(path, "audio file")
            found = usable_items([CatalogueItem(path.name, path)], printable(path))
        for item in found:
            resolved = Path(item.audio_path).resolve()
            if base is not None and resolved.is_relative_to(base):
                item.item_id = resolved.relative_to(base).as_posix()
        items.extend(found)
    return items


def _add(args: argparse.Namespace) -> int:
    from hybrid_retrieval.audio.reader import DEFAULT_WORKERS
    from hybrid_retrieval.hub import check_writable, save_or_rescue
    from hybrid_retrieval.index import load_index, save_index
    from hybrid_retrieval.index.search_index import add_items

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_writable(args.index)
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)
    index = load_index(args.index, require=("model", "checkpoint", "embedding", "source"))
    model = _index_model(index, _checkpoint_of(index, args.checkpoint), args.device)
    items = files_to_add(args.sources, index.info["source"], args.metadata)
    started = time.perf_counter()
    add_items(index, model, items, cache_dir=args.cache_dir,
              workers=DEFAULT_WORKERS if args.workers is None else args.workers)
    index.retune()
    save_or_rescue(lambda path: save_index(index, path), args.index, f"the index of {len(index)} items")
    print(f"added {len(items)} items to {printable(args.index)} ({len(index)} now) "
          f"in {time.perf_counter() - started:.1f} s")
    _print_search(index.info["search"])
    return 0


def _remove(args: argparse.Namespace) -> int:
    from hybrid_retrieval.hub import check_writable, save_or_rescue
    from hybrid_retrieval.index import load_index, save_index

    check_writable(args.index)
    index = load_index(args.index)
    index.remove(args.names)
    index.retune()
    save_or_rescue(lambda path: save_index(index, path), args.index, f"the index of {len(index)} items")
    print(f"removed {len(set(args.names))} items from {printable(args.index)} ({len(index)} left)")
    _print_search(index.info["search"])
    return 0
