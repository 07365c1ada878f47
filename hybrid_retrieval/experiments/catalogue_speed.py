"""The catalogue benchmarks of `scripts/bench.py` (`experiments.speed` runs them): files/s from
audio files to a saved index beside the tower alone and reading alone, on generated clips of mixed
lengths, rates and formats (`--only catalogue`); and a text `search` from a cold start, split into
import, load and query (`--only coldstart`). See `experiments.speed` for how measurements run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hybrid_retrieval.experiments.speed import _sync, fixed_allocator_thresholds, mb, rss_mb, run_worker
from hybrid_retrieval.report import markdown_table

CATALOGUE_RATES = (16_000, 22_050, 32_000, 44_100, 48_000)
CATALOGUE_VARIANTS = {"read": "reading alone: decoding and resampling in one thread, no tower",
                      "tower": "audio tower alone (clips decoded beforehand)",
                      "e2e-0": "files to index, read by a thread of the main process (0 workers)",
                      "e2e-1": "files to index, 1 reader process",
                      "e2e-2": "files to index, 2 reader processes"}


def make_mixed_clips(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` clips of 2 to 25 s (uniform) at the rates of CATALOGUE_RATES, as WAV and FLAC in
    turn: tones over noise. The same files for a seed."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rate, seconds = CATALOGUE_RATES[i % len(CATALOGUE_RATES)], float(rng.uniform(2.0, 25.0))
        t = np.arange(int(rate * seconds)) / rate
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t) + 0.05 * rng.standard_normal(len(t))
        path = folder / f"clip{i:04d}.{('wav', 'flac')[i % 2]}"
        if not path.exists():
            sf.write(path, wave.astype(np.float32), rate)
        paths.append(path)
    return paths


def measure_catalogue(variant: str, device: str, folder: str, count: int, window_seconds: float) -> dict:
    from hybrid_retrieval.audio.io import audio_windows
    from hybrid_retrieval.data.catalogue import load_catalogue
    from hybrid_retrieval.index import build_index, save_index
    from hybrid_retrieval.model import create_model

    fixed_allocator_thresholds()  # each variant in its steady state, as in the embedding benchmark
    model = create_model("mn04_minilm", pretrained=False).to(device).eval()  # speed only
    paths = make_mixed_clips(Path(folder), count)
    tower = model.audio_tower
    window = tower.window_samples(window_seconds)
    if variant == "read":

        def run() -> None:
            for path in paths:
                for _ in audio_windows(path, window):
                    pass
    elif variant == "tower":
        pieces = [(i, torch.from_numpy(piece)) for i, path in enumerate(paths) for piece in audio_windows(path, window)]

        def run() -> None:
            tower.embed_windows(iter(pieces), len(paths), 32)
    else:
        workers = int(variant.split("-")[1])

        def run() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                index = build_index(model, load_catalogue(folder), {"path": "bench"}, cache_dir=Path(tmp) / "cache",
                                    window_seconds=window_seconds, progress=False, workers=workers)
                save_index(index, Path(tmp) / "bench.index")
    run()  # warm-up: oneDNN builds its kernels for each new input shape on first use
    setup_rss = rss_mb()
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    run()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"files_per_s": len(paths) / seconds, "seconds": seconds, "setup_rss_mb": setup_rss,
            "cpu_ms_per_file": (time.process_time() - cpu) * 1e3 / len(paths)}  # this process's threads


# A text search as `hybrid-retrieval search` runs it, timed in its parts (run with `python -c`, so
# that the imports are timed cold: argv = index, query).
COLD_SEARCH = """
import json, sys, time
start = time.perf_counter()
import hybrid_retrieval.cli
from hybrid_retrieval.index.query_encoder import open_query_encoder
from hybrid_retrieval.index.store import load_index
imported = time.perf_counter()
index = load_index(sys.argv[1], require=("model", "checkpoint"))
encoder = open_query_encoder(index)
loaded = time.perf_counter()
scores, rows = index.search(encoder.encode([sys.argv[2]]), 10)
print([index.ids[row] for row in rows[0].tolist()], file=sys.stderr)
done = time.perf_counter()
print("RESULT " + json.dumps({"import_s": imported - start, "load_s": loaded - imported, "query_s": done - loaded}))
"""


def prepare_coldstart(device: str, folder: str) -> dict:
    """A checkpoint (mn04_minilm, text tower frozen, the audio tower's weights in the file so the
    released ones are not needed), an index of 20 clips, and a copy of the index without the query
    identity (the whole-model check indexes had before)."""
    from hybrid_retrieval.data.catalogue import load_catalogue
    from hybrid_retrieval.fingerprint import module_state_hash
    from hybrid_retrieval.index import build_index, save_index
    from hybrid_retrieval.model import create_model
    from hybrid_retrieval.training.checkpoint import TrainingState, save_checkpoint

    root = Path(folder)
    make_mixed_clips(root / "clips", 20)
    torch.manual_seed(0)
    model = create_model("mn04_minilm", pretrained=False).to(device).eval()
    checkpoint = save_checkpoint(root / "checkpoint", model, {"audio_pretrained": False}, TrainingState(1, 1),
                                 frozen=("text",))
    index = build_index(model.freeze(text=True), load_catalogue(root / "clips"), {"path": str(checkpoint)},
                        window_seconds=10.0, progress=False)
    save_index(index, root / "new.index")
    del index.info["model"]["parts"]
    index.info["model"]["weights"] = module_state_hash(model)
    save_index(index, root / "old.index")
    return {"checkpoint": str(checkpoint)}


# What a worker process measures, by kind: the functions above, and the dry run's (imported when used).
def bench_catalogue(args: argparse.Namespace) -> str:
    folder = Path(args.out) / "mixed_clips"
    runs: dict[str, list[dict]] = {v: [] for v in CATALOGUE_VARIANTS}
    for r in range(args.rounds):
        print(f"catalogue, round {r + 1}/{args.rounds}", flush=True)
        for variant in CATALOGUE_VARIANTS:
            runs[variant].append(run_worker("catalogue", variant=variant, device=args.device, folder=str(folder),
                                            count=args.catalogue_files, window_seconds=10.0, threads=args.threads))
    rows = {}
    for variant, label in CATALOGUE_VARIANTS.items():
        rates = [m["files_per_s"] for m in runs[variant]]
        ratios = [m["files_per_s"] / t["files_per_s"] for m, t in zip(runs[variant], runs["tower"])]
        rows[label] = {"files/s (median)": f"{statistics.median(rates):.1f}",
                       "per round": " / ".join(f"{x:.1f}" for x in rates),
                       "× tower alone (median of rounds)": f"{statistics.median(ratios):.2f}",
                       "CPU ms per file (median)": f"{statistics.median(m['cpu_ms_per_file'] for m in runs[variant]):.1f}",
                       "RSS after setup / peak, MB": f"{mb(statistics.median(m['setup_rss_mb'] for m in runs[variant]))} / "
                                                     f"{mb(max(m['peak_rss_mb'] for m in runs[variant]))}"}
    columns = ["files/s (median)", "× tower alone (median of rounds)", "CPU ms per file (median)", "per round",
               "RSS after setup / peak, MB"]
    table = markdown_table(rows, columns, f"{args.catalogue_files} clips of 2-25 s, 16-48 kHz, WAV/FLAC; mn04_as, "
                                          f"{args.device}, 10-s windows")
    # With the tower alone keeping every core busy, files to index can at best spend the tower's
    # CPU time plus the reading's on those cores: a ceiling on the ratio, whatever the overlap.
    cpu = {v: statistics.median(m["cpu_ms_per_file"] for m in runs[v]) for v in ("read", "tower")}
    busy = statistics.median(m["cpu_ms_per_file"] * m["files_per_s"] / 1e3 for m in runs["tower"])
    return table + (f"\n\nThe tower alone keeps {busy:.2f} of {os.cpu_count()} cores busy; reading costs "
                    f"{cpu['read'] / cpu['tower']:.2f} of its CPU time, so files to index can reach at most "
                    f"{cpu['tower'] / (cpu['tower'] + cpu['read']) * os.cpu_count() / busy:.2f} of its rate here "
                    f"(every core busy with the tower's and the reading's work, nothing else).")


def _timed_process(command: list[str], env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{command} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return seconds, json.loads(lines[-1][len("RESULT "):]) if lines else {}


def bench_coldstart(args: argparse.Namespace) -> str:
    import shutil

    root = Path(args.out) / "coldstart"
    cache = root / "cache"
    run_worker("coldstart", folder=str(root), device=args.device)
    env = {**os.environ, "HYBRID_RETRIEVAL_CACHE": str(cache)}
    query = "a slow sad piano ballad"
    rows = {}
    empty = statistics.median(_timed_process([sys.executable, "-c", "pass"], env)[0] for _ in range(args.cold_runs))
    # the first-search rows clear the cache before each run; their last export stays for the cached rows
    for label, index, fresh in (("first search: no cached encoder (text tower built, export written)", "new.index",
                                 True),
                                ("cached ONNX query encoder", "new.index", False),
                                ("index without a query identity (whole model loaded and hashed, as before)",
                                 "old.index", False)):
        walls, splits = [], []
        for _ in range(args.cold_runs):
            if fresh:
                shutil.rmtree(cache, ignore_errors=True)
            cli = [sys.executable, "-m", "hybrid_retrieval.cli", "search", str(root / index), query, "--top", "10"]
            walls.append(_timed_process(cli, env)[0])
            if fresh:
                shutil.rmtree(cache, ignore_errors=True)
            splits.append(_timed_process([sys.executable, "-c", COLD_SEARCH, str(root / index), query], env)[1])
        print(f"  coldstart {label}: {walls} {splits}", flush=True)
        rows[label] = {"command s (median)": f"{statistics.median(walls):.2f}",
                       "per run": " / ".join(f"{x:.2f}" for x in walls),
                       **{f"{part} s": f"{statistics.median(s[part + '_s'] for s in splits):.2f}"
                          for part in ("import", "load", "query")}}
    columns = ["command s (median)", "per run", "import s", "load s", "query s"]
    return markdown_table(rows, columns, f"`search` in a new process (python itself: {empty:.2f} s)")
