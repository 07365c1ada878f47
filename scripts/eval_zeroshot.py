"""Zero-shot classification on SynthMusic: genre, mood, lead instrument and tempo bin, per model.

    python scripts/eval_zeroshot.py --checkpoint runs/main_job/1 --checkpoint audioset_tags \
        --root data/synthmusic --split evaluation --cache-dir .cache/features

Each --checkpoint is anything `--checkpoint` takes elsewhere (a run or checkpoint folder, a released
checkpoint, audioset_tags, a Hugging Face Hub id). Classes, prompts and metrics:
hybrid_retrieval.experiments.zeroshot_table. Prints the table; --out also writes table.md and
table.json there.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hybrid_retrieval.errors import run_reporting_errors
from hybrid_retrieval.experiments.zeroshot_table import run_zeroshot
from hybrid_retrieval.hub import atomic_path, check_writable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="a model to classify with (repeat)")
    parser.add_argument("--root", default="data/synthmusic", help="SynthMusic folder (default data/synthmusic)")
    parser.add_argument("--split", default="evaluation", help="split name or alias (default evaluation)")
    parser.add_argument("--cache-dir", default=None, help="feature cache for frozen pretrained towers")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--out", default=None, help="folder to write table.md and table.json to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for folder in filter(None, (args.out, args.cache_dir)):
        check_writable(folder, directory=True)  # before any work
    command = "python scripts/eval_zeroshot.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run_zeroshot(args.checkpoint, args.root, args.split, args.cache_dir, args.device, command)
    print(result.markdown)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name, text in (("table.md", result.markdown + "\n"),
                           ("table.json", json.dumps({"rows": result.rows, "classes": result.classes}, indent=1))):
            with atomic_path(Path(args.out) / name) as tmp:
                tmp.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
