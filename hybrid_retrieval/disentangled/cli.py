"""`hybrid-retrieval similar`: tracks of a catalogue most similar to an audio query, per condition.

    hybrid-retrieval similar query.wav --catalog my_music/ --condition tempo --top 10
    hybrid-retrieval similar query.wav --catalog my_music/ --save-catalog my_music.catalogue
    hybrid-retrieval similar query.wav --catalog my_music.catalogue --condition genre --json

--checkpoint defaults to the installed default model, $HYBRID_RETRIEVAL_CACHE/disentangled/model
(~/.cache/hybrid_retrieval/disentangled/model), which
`python scripts/train_disentangled.py with export_default=True` writes. The handler imports the
model code when it runs, so building the parser stays cheap for every other sub-command.
"""
from __future__ import annotations

import argparse
import json

from hybrid_retrieval.terminal import at_least_one, printable, readable_file


def add_similar_command(sub: argparse._SubParsersAction) -> None:
    """Register `similar` on the main parser's sub-commands."""
    similar = sub.add_parser("similar", help="tracks most similar to an audio file in genre, mood, instrument, "
                                             "tempo or all of them (disentangled similarity model)")
    similar.add_argument("query", metavar="QUERY_AUDIO", help="audio file to find similar tracks to")
    similar.add_argument("--catalog", required=True, metavar="INDEX_OR_DIR",
                         help="a folder of audio files (recursive) or a catalogue file saved with --save-catalog")
    similar.add_argument("--condition", default="all",
                         help="genre | mood | instrument | tempo (the model's conditions) | all (default: all)")
    similar.add_argument("--top", type=at_least_one, default=10, help="number of tracks to list (default: 10)")
    similar.add_argument("--checkpoint", default=None,
                         help="model directory or run directory (default: the installed default model)")
    similar.add_argument("--save-catalog", default=None, metavar="FILE",
                         help="also save the embedded catalogue to FILE (replaced atomically), for later --catalog")
    similar.add_argument("--cache-dir", default=None, help="feature cache of the audio tower's outputs")
    similar.add_argument("--weights", default=None, help="explicit path of the audio tower's weights")
    similar.add_argument("--json", action="store_true", help="print one JSON object")
    similar.add_argument("--device", default="auto",
                         help="where the audio tower runs: auto | cpu | cuda (default auto; the small "
                              "similarity head runs on the CPU)")
    similar.set_defaults(func=_similar)


def _similar(args: argparse.Namespace) -> int:
    from hybrid_retrieval.disentangled.search import SimilaritySearch
    from hybrid_retrieval.hub import check_writable, save_or_rescue

    readable_file(args.query, "query audio file")  # the inputs and outputs are checked before any work
    if args.save_catalog:
        check_writable(args.save_catalog)
    if args.cache_dir:
        check_writable(args.cache_dir, directory=True)
    search = SimilaritySearch.from_checkpoint(args.checkpoint, args.catalog, args.cache_dir, args.weights,
                                              progress=not args.json, device=args.device)
    matches = search.query(args.query, args.condition, args.top)
    if args.json:
        print(json.dumps({"query": args.query, "condition": args.condition, "checkpoint": str(search.checkpoint),
                          "results": [{"rank": r, "path": m.path, "score": round(m.score, 6)}
                                      for r, m in enumerate(matches, 1)]}))
    else:
        print(f"{printable(args.query)}  (condition: {printable(args.condition)})")
        for rank, match in enumerate(matches, 1):
            print(f"  {rank:3d}  {match.score:6.3f}  {printable(match.path)}")
    if args.save_catalog:  # after the results, which a failed save must not take away
        catalogue = search.catalogue
        save_or_rescue(catalogue.save, args.save_catalog, f"the catalogue of {len(catalogue.paths)} embedded tracks")
    return 0
