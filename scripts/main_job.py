"""The README's main job, offline on a CPU: SynthMusic end to end.

1. generate the SynthMusic benchmark into data/synthmusic (cached: a second run does nothing);
2. train the content-only retrieval model on it (scripts/train.py, frozen pretrained towers)
   and evaluate it with scripts/eval_map10.py, beside a random baseline;
3. the hybrid-retrieval table: content-only vs metadata fusion, beside random and the training-free
   AudioSet-tags model (scripts/benchmark.py);
4. the zero-shot classification table: genre, mood, lead instrument and tempo bin of the
   evaluation clips with the content-only model, the best hybrid row's model (items without
   metadata) and the training-free model (scripts/eval_zeroshot.py);
5. the disentangled-similarity table: triplet accuracy per condition of the four configs
   (scripts/eval_triplets.py, models saved to results/disentangled) and its subspace picture.
Steps 3 to 5 need the pretrained audio tower and are skipped without it; then the first lines
say so, and that the numbers will not be meaningful, and how to fetch the weights.
Each step is the command a user would run; it is printed before it runs.

    python scripts/main_job.py [--seeds 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from hybrid_retrieval.audio.pretrained import PRETRAINED, WeightsNotFoundError, resolve_weights, weights_cache_dir
from hybrid_retrieval.experiments.retrieval_table import best_hybrid_run

ROOT = Path(__file__).resolve().parents[1]
DATA = "data/synthmusic"
DISENTANGLED = "results/disentangled"
# Without the pretrained audio weights: the training clips (and validation clips) of the
# from-scratch fallback, so that the whole job stays within its CPU budget (BENCHMARKS.md).
FALLBACK_CLIPS = 300


def step(title: str, args: list[str], env: dict) -> float:
    print(f"\n== {title}\n$ {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the two tables (default 1)")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HYBRID_RETRIEVAL_RUNS": str(ROOT / "runs" / "main_job")}
    timings: dict[str, float] = {}
    started = time.perf_counter()

    try:
        resolve_weights("mn04_as")
        pretrained = True
    except WeightsNotFoundError as exc:
        spec = PRETRAINED["mn04_as"]
        print(f"WARNING: {exc.reason}.\n"
              "The audio tower will train from random initialisation on a cut-down budget (the first "
              f"{FALLBACK_CLIPS} clips, 2 short epochs), so the numbers below will NOT be meaningful, and the "
              "fusion and disentangled tables are skipped. To fix it, fetch the weights once, then run again:\n"
              f"  curl -L --create-dirs -o {weights_cache_dir() / spec.filename} {spec.url}\n"
              "(or set HYBRID_RETRIEVAL_WEIGHTS_DIR to a folder that holds that file)", flush=True)
        pretrained = False

    timings["generate SynthMusic"] = step("SynthMusic benchmark", [
        "scripts/make_synthmusic.py", "--out", DATA, "--seed", "0", "--no-progress"], env)

    train_args = ["scripts/train.py", "with", "synthmusic", "content_only", "progress=False"]
    if not pretrained:  # a tower trained from scratch runs forward and backward on every clip of every step
        train_args += ["audio_pretrained=False", "epochs=2", "clip_seconds=5.0", f"limit_items={FALLBACK_CLIPS}"]
    runs = ROOT / "runs" / "main_job"
    before = set(runs.glob("[0-9]*")) if runs.is_dir() else set()
    timings["train content-only"] = step("content-only retrieval model", train_args, env)
    (run_dir,) = set(runs.glob("[0-9]*")) - before
    timings["evaluate"] = step("evaluation (DCASE 2024 task 8 metrics)", [
        "scripts/eval_map10.py", "--checkpoint", str(run_dir), "--dataset", "synthmusic", "--root", DATA,
        "--split", "evaluation", "--cache-dir", ".cache/features"], env)

    if pretrained:
        timings["fusion table"] = step("hybrid retrieval: metadata fusion vs content-only", [
            "scripts/benchmark.py", "--dataset", "synthmusic", "--seeds", str(args.seeds)], env)
        _, hybrid_run = best_hybrid_run(ROOT / "results" / "synthmusic" / "table.json")
        timings["zero-shot table"] = step("zero-shot classification: genre, mood, instrument, tempo", [
            "scripts/eval_zeroshot.py", "--checkpoint", str(run_dir), "--checkpoint", str(hybrid_run),
            "--checkpoint", "audioset_tags", "--root", DATA, "--split", "evaluation",
            "--cache-dir", ".cache/features", "--out", "results/zeroshot"], env)
        timings["disentangled table"] = step("disentangled music similarity: triplet accuracy per condition", [
            "scripts/eval_triplets.py", "--seeds", str(args.seeds), "--out", DISENTANGLED], env)
        timings["subspace picture"] = step("2-D projections of the subspaces", [
            "scripts/plot_subspaces.py", "--checkpoint", f"{DISENTANGLED}/csn_track",
            "--out", f"{DISENTANGLED}/subspaces.png"], env)

    total = time.perf_counter() - started
    print("\n== time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
