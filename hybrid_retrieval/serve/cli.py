"""`hybrid-retrieval serve`: an index behind an HTTP API and a web page.

    hybrid-retrieval index build my_sounds/ --checkpoint audioset_tags --out my_sounds.index
    hybrid-retrieval serve my_sounds.index            # then open http://127.0.0.1:8000/

Only the parser is built here; FastAPI, uvicorn and the models are imported when the command runs.
"""
from __future__ import annotations

import argparse
import sys

from hybrid_retrieval.serve.limits import Limits
from hybrid_retrieval.terminal import at_least_one, positive_number, printable


def port_number(value: str) -> int:
    """argparse type of --port: 1 to 65535."""
    number = at_least_one(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, not {number}")
    return number


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    """Register `serve` on the main parser's sub-commands."""
    serve = sub.add_parser("serve", help="an HTTP API and a web page that search an index and play the results")
    serve.add_argument("index", help="index file (from `hybrid-retrieval index build`)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    serve.add_argument("--checkpoint", default=None, help="the index's checkpoint, if it has moved (verified against the index)")
    serve.add_argument("--similar", default=None, metavar="CHECKPOINT_OR_CATALOG",
                       help="a disentangled similarity model (its catalogue: the index's files, embedded at start-up) "
                            "or a catalogue saved by `similar --save-catalog`: enables /similar and the page's "
                            "'similar in genre / mood / instrument / tempo'")
    serve.add_argument("--similar-checkpoint", default=None,
                       help="the similarity model of a --similar catalogue file (default: the installed default model)")
    serve.add_argument("--metadata", default=None,
                       help="metadata CSV (Clotho layout: file_name, keywords, closed_tags, description) whose tags and "
                            "descriptions are shown with the items")
    defaults = Limits()
    serve.add_argument("--max-batch", type=at_least_one, default=defaults.max_batch,
                       help=f"text queries encoded together when they arrive at once (default {defaults.max_batch}; "
                            "1: one at a time)")
    serve.add_argument("--max-upload-mb", type=positive_number, default=defaults.max_upload_bytes / 2 ** 20,
                       help=f"largest example clip accepted, MiB (default {defaults.max_upload_bytes / 2 ** 20:g})")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow cross-origin requests from this origin, e.g. https://example.org (repeatable; "
                            "default: none allowed)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hybrid_retrieval.deps import optional_import

    uvicorn = optional_import("uvicorn", "serve", "hybrid-retrieval serve")
    optional_import("fastapi", "serve", "hybrid-retrieval serve")
    from hybrid_retrieval.serve.app import create_app
    from hybrid_retrieval.serve.service import SearchService

    limits = replace(Limits(), max_batch=args.max_batch, max_upload_bytes=int(args.max_upload_mb * 2 ** 20))
    service = SearchService.open(args.index, checkpoint=args.checkpoint, similar=args.similar,
                                 similar_checkpoint=args.similar_checkpoint, metadata=args.metadata, limits=limits,
                                 device=args.device)
    app = create_app(service, args.cors_origin)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {printable(args.host)}: other machines can reach this server", file=sys.stderr)
    print(f"serving {len(service.index)} items of {printable(args.index)} at http://{printable(args.host)}:{args.port}/",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.access_log)
    return 0
