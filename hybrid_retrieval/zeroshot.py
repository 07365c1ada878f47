"""Zero-shot classification, CLAP style: a clip against a prompt per class, no training.

    hybrid-retrieval classify song.wav more_songs/ --checkpoint runs/3 --labels rock,techno,waltz \
        --prompt "this is {} music"
    probabilities = model.classify(waveforms, ["rock", "techno", "waltz"], prompt="this is {} music")

Each class name is put into the prompt at its `{}` and embedded as a text query; each clip is
embedded as a catalogue item without metadata (hybrid checkpoints fall back to the audio, as for
items that have none); cos_c is the cosine of the clip with class c's prompt. Scores
(`class_probabilities`), with s the model's logit scale (1 / temperature, what its contrastive
training used):

* single-label: p_c = softmax_c(s * cos_c), over the given classes (they sum to 1);
* multi-label:  p_c = sigmoid(s * (cos_c - mean_k cos_k)): each class on its own, calibrated
  against the clip's mean cosine over the given classes, so 0.5 means "as close to this class's
  prompt as to the average prompt of the set" and a class scores above 0.5 only if the clip is
  closer to it than to the set's average. Without labelled data no absolute threshold can be
  calibrated; this one makes the scores comparable across clips (a clip close to every prompt
  does not score high on all of them) and independent per class given the set.

Labels are printed best first. The command handler imports the model code when it runs, so that
building the command line's parser stays cheap.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.terminal import add_model_arguments, at_least_one, printable, window_or_default

if TYPE_CHECKING:
    from hybrid_retrieval.data.items import CatalogueItem
    from hybrid_retrieval.model import RetrievalModel

PLACEHOLDER = "{}"


def prompted(class_names: Sequence[str], prompt: str = PLACEHOLDER) -> list[str]:
    """Each class name put into `prompt` at its one `{}`; BadInputError for a prompt without
    exactly one `{}`, an empty class name, a class named twice, or fewer than two classes."""
    if prompt.count(PLACEHOLDER) != 1:
        raise BadInputError(f"the prompt must hold one {PLACEHOLDER} where the class name goes, not {prompt!r}")
    names = list(class_names)
    if len(names) < 2:
        raise BadInputError(f"zero-shot classification needs at least two classes, got {names}")
    for number, name in enumerate(names, 1):
        if not name.strip():
            raise BadInputError(f"class {number} of {len(names)} is empty ({name!r})")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadInputError(f"classes named more than once: {twice}")
    return [prompt.replace(PLACEHOLDER, name) for name in names]


def class_probabilities(cosines: Tensor, logit_scale: float, multi_label: bool = False) -> Tensor:
    """(n_clips, n_classes) scores from clip-prompt cosines (see the module docstring):
    softmax_c(s * cos_c), or with `multi_label` sigmoid(s * (cos_c - mean_k cos_k))."""
    logits = logit_scale * cosines.double()
    if multi_label:
        return torch.sigmoid(logits - logits.mean(dim=1, keepdim=True)).float()
    return torch.softmax(logits, dim=1).float()


def clip_embeddings(model: RetrievalModel, items: Sequence[CatalogueItem], window_seconds: float | None = None,
                    cache_dir: str | Path | None = None, progress: bool = True) -> Tensor:
    """(n, d) item embeddings of audio files without metadata, as `index build` embeds them
    (files resolved, long files in windows of `window_seconds`)."""
    from hybrid_retrieval.embedding import embed_catalogue

    paths = [str(Path(item.audio_path).resolve()) for item in items]
    return embed_catalogue(model, paths, None, cache_dir, window_seconds=window_seconds, progress=progress)


def text_embeddings(model: RetrievalModel, texts: Sequence[str]) -> Tensor:
    """(n, d) query embeddings of texts."""
    from hybrid_retrieval.embedding import embed_queries

    return embed_queries(model, texts, progress=False)


def classify_items(model: RetrievalModel, items: Sequence[CatalogueItem], class_names: Sequence[str],
                   prompt: str = PLACEHOLDER, multi_label: bool = False, window_seconds: float | None = None,
                   cache_dir: str | Path | None = None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """(scores, cosines), (n_items, n_classes) each, of audio files against prompted class names."""
    labels = text_embeddings(model, prompted(class_names, prompt))
    cosines = clip_embeddings(model, items, window_seconds, cache_dir, progress) @ labels.T
    return class_probabilities(cosines, float(model.logit_scale), multi_label), cosines


def read_labels(labels: str | None, labels_file: str | None) -> list[str]:
    """Class names from `--labels a,b,c` and/or `--labels-file F` (one per line, for names that
    hold commas, such as AudioSet's)."""
    from hybrid_retrieval.index.cli import read_lines

    names = [name.strip() for name in labels.split(",") if name.strip()] if labels else []
    if labels_file:
        names += read_lines(labels_file)
    if not names:
        raise BadInputError("no class names: give --labels a,b,c or --labels-file FILE")
    return names


def add_classify_command(sub: argparse._SubParsersAction) -> None:
    """Register `classify` on the main parser's sub-commands."""
    classify = sub.add_parser("classify", help="zero-shot classification of audio files against class names")
    classify.add_argument("files", nargs="+", metavar="FILE_OR_DIR", help="audio files or folders (recursive)")
    classify.add_argument("--labels", default=None, help="comma-separated class names, e.g. rock,techno,waltz")
    classify.add_argument("--labels-file", default=None, help="class names, one per line (UTF-8)")
    classify.add_argument("--prompt", default=PLACEHOLDER,
                          help="text each class name is put into at its {} (default: the name alone), "
                               "e.g. 'this is {} music'")
    classify.add_argument("--multi-label", action="store_true",
                          help="one calibrated sigmoid score per class instead of a softmax over the classes")
    classify.add_argument("--top", type=at_least_one, default=None, help="classes to show per file (default: all)")
    classify.add_argument("--json", action="store_true", help="one JSON object per file and line")
    add_model_arguments(classify)
    classify.set_defaults(func=_classify)


def _classify(args: argparse.Namespace) -> int:
    from hybrid_retrieval.data.catalogue import audio_inputs
    from hybrid_retrieval.models import load_retrieval_model

    names = read_labels(args.labels, args.labels_file)
    prompted(names, args.prompt)  # bad labels or prompt are refused before any work
    items = audio_inputs(args.files)
    model, _ = load_retrieval_model(args.checkpoint, args.device)
    window = window_or_default(args.window_seconds, model.audio_tower.default_window_seconds)
    scores, cosines = classify_items(model, items, names, args.prompt, args.multi_label, window,
                                     progress=not args.json)
    for item, row, cos in zip(items, scores.tolist(), cosines.tolist()):
        order = sorted(range(len(names)), key=lambda c: -row[c])[: args.top]
        if args.json:
            ranking = [{"label": names[c], "score": round(row[c], 6), "cosine": round(cos[c], 6)} for c in order]
            print(json.dumps({"file": item.item_id, "path": str(item.audio_path), "multi_label": args.multi_label,
                              "labels": ranking}))
            continue
        print(printable(item.item_id))
        for c in order:
            print(f"  {row[c]:7.3f}  {printable(names[c])}")
    return 0
