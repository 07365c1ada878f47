"""Draw each condition's subspace in 2-D (PCA), coloured by every condition's labels.

    python scripts/eval_triplets.py --out results/disentangled          # trains and saves the models
    python scripts/plot_subspaces.py --checkpoint results/disentangled/csn_track --out docs/subspaces.png

Rows are subspaces, columns label types: a disentangled model shows genre clusters in the genre
subspace (diagonal) and none in, say, the tempo subspace. Tempo is coloured by BPM. Tracks are
those of --split (default: SynthMusic's evaluation split, not seen in training).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from hybrid_retrieval.deps import optional_import
from hybrid_retrieval.disentangled.checkpoint import find_model, load_model
from hybrid_retrieval.disentangled.conditions import TEMPO
from hybrid_retrieval.disentangled.features import load_track_features, segment_frames
from hybrid_retrieval.disentangled.model import embed_tracks
from hybrid_retrieval.errors import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model or run directory (default: the installed default)")
    parser.add_argument("--data-root", default="data/synthmusic")
    parser.add_argument("--split", default="evaluation")
    parser.add_argument("--cache-dir", default=".cache/features")
    parser.add_argument("--out", default="docs/subspaces.png")
    args = parser.parse_args(argv)
    optional_import("matplotlib", "plots", "the subspace picture").use("Agg")  # no screen: render to files
    plt = optional_import("matplotlib.pyplot", "plots", "the subspace picture")
    pca = optional_import("sklearn.decomposition", "plots", "the subspace picture").PCA

    model, source, config = load_model(args.checkpoint)
    conditions = model.config.conditions
    data = load_track_features(source, args.data_root, args.split, conditions, config["train"].get("label_columns"),
                      args.cache_dir)
    embeddings = embed_tracks(model, data.sequences, segment_frames(model.config.segment_seconds, source.frame_seconds))

    n = len(conditions)
    fig, axes = plt.subplots(n, n, figsize=(3.2 * n, 3.0 * n), squeeze=False)
    for row, space in enumerate(conditions):
        with torch.inference_mode():
            points = pca(n_components=2, random_state=0).fit_transform(model.subspace(embeddings, space).numpy())
        for col, label_type in enumerate(conditions):
            ax = axes[row, col]
            labels = data.tracks.labels[label_type]
            if label_type == TEMPO:
                dots = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="viridis", s=7)
                if row == 0:
                    bar = fig.colorbar(dots, cax=ax.inset_axes([0.1, 1.12, 0.8, 0.06]), orientation="horizontal")
                    bar.set_label("BPM", fontsize=8)
                    bar.ax.xaxis.set_label_position("top")
            else:
                names = sorted(set(labels))
                colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
                for k, name in enumerate(names):
                    mask = np.array([label == name for label in labels])
                    ax.scatter(points[mask, 0], points[mask, 1], s=7, color=colours(k), label=name)
                if row == 0:
                    ax.legend(fontsize=6, markerscale=1.5, loc="lower center", bbox_to_anchor=(0.5, 1.02),
                              ncol=2, frameon=False)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{space} subspace", fontsize=11)
            if row == n - 1:
                ax.set_xlabel(f"coloured by {label_type}", fontsize=11)
    fig.suptitle(f"PCA of each subspace, {args.split} split ({len(data.tracks)} tracks); "
                 f"model {find_model(args.checkpoint).name}", y=1.0)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
