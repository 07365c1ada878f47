"""`hybrid-retrieval` command line: one sub-command per user task."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata

import torch

from hybrid_retrieval.audio.io import AudioLoadError
from hybrid_retrieval.audio.tower import audioset_labels, create_audio_tower
from hybrid_retrieval.devices import resolve_device
from hybrid_retrieval.disentangled.cli import add_similar_command
from hybrid_retrieval.embedding_files import add_embed_command
from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.index.cli import add_index_commands
from hybrid_retrieval.predict import add_predict_command
from hybrid_retrieval.rank_text import add_rank_text_command
from hybrid_retrieval.terminal import at_least_one, printable
from hybrid_retrieval.zeroshot import add_classify_command


def _tag(args: argparse.Namespace) -> int:
    from hybrid_retrieval.embedding import embed_audio_files

    device = resolve_device(args.device)
    tower = create_audio_tower(f"efficientat:{args.model}", pretrained=True, weights=args.weights).to(device)
    window_seconds = tower.default_window_seconds if args.window_seconds is None else args.window_seconds
    labels = audioset_labels()
    failed = 0
    for path in args.files:  # one at a time: a file's labels are printed as soon as it is done
        out = embed_audio_files(tower, [path], window_seconds=window_seconds)[0]
        if isinstance(out, AudioLoadError):
            print(f"error: {printable(out)}", file=sys.stderr)
            failed += 1
            continue
        logits = out.logits[0]
        probs = torch.sigmoid(logits)
        top = [(labels[i], round(float(probs[i]), 6)) for i in torch.argsort(probs, descending=True)[: args.top]]
        if args.json:
            print(json.dumps({"file": str(path), "top": top, "logits": [round(float(x), 6) for x in logits]}))
        else:
            print(printable(path))
            for label, prob in top:
                print(f"  {prob:7.3f}  {label}")
    if failed:
        print(f"tagged {len(args.files) - failed} of {len(args.files)} files; {failed} could not be read",
              file=sys.stderr)
    return 1 if failed else 0


def add_tag_command(sub: argparse._SubParsersAction) -> None:
    tag = sub.add_parser("tag", help="AudioSet labels of audio files with an EfficientAT model")
    tag.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    tag.add_argument("--model", default="mn04_as", help="EfficientAT model name (default: mn04_as)")
    tag.add_argument("--weights", default=None, help="explicit path of the model's .pt weights")
    tag.add_argument("--top", type=at_least_one, default=10, help="number of labels to show (default: 10)")
    tag.add_argument("--json", action="store_true", help="one JSON object per file and line")
    tag.add_argument("--window-seconds", type=float, default=None,
                     help="files longer than this are read and tagged window by window, their logits averaged "
                          "(default: the model's training clip length, 10 s; 0: whole files in one pass)")
    tag.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    tag.set_defaults(func=_tag)


def build_parser() -> argparse.ArgumentParser:
    """Each sub-command lives with the feature it serves and registers itself here."""
    parser = argparse.ArgumentParser(prog="hybrid-retrieval", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_tag_command(sub)
    add_similar_command(sub)
    add_index_commands(sub)
    add_predict_command(sub)
    add_classify_command(sub)
    add_rank_text_command(sub)
    add_embed_command(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, through the package metadata)."""
    try:
        return metadata.version("hybrid_retrieval")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
