"""`hybrid-retrieval rank-text`: audio -> text retrieval, the texts of a file ranked for each clip.

    hybrid-retrieval rank-text --checkpoint runs/3 --audio clip.wav other.flac --texts captions.txt --top 5

The texts (UTF-8, one per line) are embedded as queries and each clip as a catalogue item without
metadata, as `classify` does; a text's score is its cosine with the clip, the score of text ->
audio search read the other way (the split-level metric is `metrics.audio_to_text_metrics`).
Ties are ranked by the texts' order in the file. The handler imports the model code when it runs.
"""
from __future__ import annotations

import argparse
import json

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.terminal import add_model_arguments, at_least_one, printable, window_or_default


def add_rank_text_command(sub: argparse._SubParsersAction) -> None:
    """Register `rank-text` on the main parser's sub-commands."""
    rank = sub.add_parser("rank-text", help="rank the texts of a file for audio clips (audio -> text retrieval)")
    rank.add_argument("--audio", nargs="+", required=True, metavar="FILE_OR_DIR",
                      help="audio files or folders (recursive): the queries")
    rank.add_argument("--texts", required=True, help="UTF-8 text file, one text (e.g. a caption) per line")
    rank.add_argument("--top", type=at_least_one, default=10, help="texts per clip (default 10)")
    rank.add_argument("--json", action="store_true", help="one JSON object per clip and line")
    add_model_arguments(rank)
    rank.set_defaults(func=_rank_text)


def _rank_text(args: argparse.Namespace) -> int:
    from hybrid_retrieval.data.catalogue import audio_inputs
    from hybrid_retrieval.index.cli import read_lines
    from hybrid_retrieval.models import load_retrieval_model
    from hybrid_retrieval.predict import ranking
    from hybrid_retrieval.zeroshot import clip_embeddings, text_embeddings

    texts = read_lines(args.texts)
    if not texts:
        raise BadInputError(f"{printable(args.texts)} holds no texts (one per line)")
    items = audio_inputs(args.audio)
    model, _ = load_retrieval_model(args.checkpoint, args.device)
    window = window_or_default(args.window_seconds, model.audio_tower.default_window_seconds)
    scores = clip_embeddings(model, items, window, progress=not args.json) @ text_embeddings(model, texts).T
    for item, row, order in zip(items, scores, ranking(scores, args.top).tolist()):
        hits = [{"rank": rank, "score": round(float(row[i]), 4), "text": texts[i]} for rank, i in enumerate(order, 1)]
        if args.json:
            print(json.dumps({"file": item.item_id, "path": str(item.audio_path), "results": hits}))
            continue
        print(printable(item.item_id))
        print(f"  {'rank':>4}  {'score':>6}  text")
        for hit in hits:
            print(f"  {hit['rank']:>4}  {hit['score']:6.3f}  {printable(hit['text'])}")
    return 0
