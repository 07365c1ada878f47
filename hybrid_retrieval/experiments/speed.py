"""Speed and scale benchmarks: audio and text embedding, search, training steps, long files, files
to index, cold text search, and the memory of each.

    python scripts/bench.py                                   # all of them on this machine's CPU
    python scripts/bench.py --only embed,text --efficientat-repo DIR   # beside the original EfficientAT
    python scripts/bench.py --only search --sizes 10000,100000
    python scripts/bench.py --only catalogue,coldstart        # files to index vs the tower; cold search
    python scripts/bench.py --only load --load-minutes 1,10,60,120   # crops and embedding of long files
    python scripts/bench.py --device cuda                     # on a GPU: adds a torch.compile row

(`scripts/bench.py` calls `run_benchmarks` here.) Every measurement runs in its own subprocess
(`python -m hybrid_retrieval.experiments.speed --worker KIND JSON`), so its peak memory is that process's maximum
resident set size (getrusage ru_maxrss; on CUDA also torch.cuda.max_memory_allocated), with
the resident size after its setup beside it. Throughputs are compared as ratios within one run:
the embedding variants run in one process, interleaved over `--rounds` rounds, and each ratio is
the median of the per-round ratios, so load from other processes on a shared machine hits both
sides alike. Results go to stdout and to --out (JSON and Markdown); every row names the device.

1. embed, text: clips/s of the EfficientAT tower (`embed_waveforms` with each runtime, one clip
   and 32 clips per call) against the original EfficientAT inference loop and a plain loop over
   the tower; captions/s of the text tower against sentence-transformers (`embed_speed`).
2. search: queries/s for top-10 over n random unit vectors (d = the model's embedding size):
   exact torch (matmul + top-k), exact FAISS (its IndexFlatIP kernel), and the approximate
   IVF index tuned to recall@10 >= 0.95, with its build time and recall measured on held-out
   queries. Uniform random unit vectors have no structure, IVF's worst case; structured vectors
   (near a random 16-d subspace, neighbourhoods continuous like learned embeddings') are
   measured for IVF too.
3. train: seconds per optimizer step on SynthMusic, frozen towers on cached features against full
   fine-tuning of both towers, with the one-off feature caching time of the frozen mode.
4. load: long recordings (generated 44.1-kHz 16-bit noise WAVs of `--load-minutes`, written under
   `--scratch` and deleted afterwards). Seconds and peak memory of one random 10-s crop, the whole
   file decoded and sliced against the windowed read training crops use (`random_crop`), side by
   side per length; and embedding a whole file as `tag` and `index build` do (`embed_audio_files`):
   window by window (the default, 10-s windows) against one forward pass over the whole file.
5. catalogue (`catalogue_speed`): files/s from audio files to a saved index (`build_index` with a
   feature cache, then `save_index`: catalogue scan, decoding, resampling, tower, heads, cache and
   index writes) on generated clips of mixed lengths, rates and formats, with the audio read by
   0, 1 and 2 worker processes, beside the tower alone on the same clips decoded beforehand
   (`embed_windows` on the same pieces) and the reading alone; each with its CPU time per file,
   and the ratio that the two CPU times allow at most. Each variant runs in a process of its own
   whose allocator thresholds are fixed first (`fixed_allocator_thresholds`), once to warm up
   (oneDNN builds kernels per input shape), then timed; the ratios are medians of per-round ratios.
6. coldstart (`catalogue_speed`): seconds of a text `hybrid-retrieval search` in a new process
   (median of `--cold-runs`), with the cached ONNX query encoder, on a first search (no cached
   encoder: the text tower is built and its export written), and for an index without a query
   identity (the whole model loaded and its weights hashed, as every search did before); and each
   split into import (the modules of the command), load (index, checkpoint check, query encoder)
   and query.
7. scale (only when asked: `--only scale`; `scale_bench`): a 10M-item catalogue of structured
   vectors as a float16 store on disk (written under --scale-dir, deleted afterwards) searched
   through an IVF-PQ index with exact re-ranking from the memory-mapped store: build time,
   recall@10 against exact search and single-query rate over a grid of nprobe and re-ranking
   depths, the memory of each step, and the time to add and remove items against the rebuild.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import torch

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.lazy import import_object
from hybrid_retrieval.report import markdown_table
from hybrid_retrieval.terminal import at_least_one

CLIP_SECONDS = 10.0

# -- measurements (each runs in a subprocess: `bench.py --worker KIND JSON`) -------------------------------

def memory_status_mb(*fields: str) -> dict[str, float]:
    """The memory `fields` of this process's /proc/self/status (VmRSS, VmHWM, RssAnon, ...) in
    MB; empty where there is no /proc (not Linux)."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                values[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return values


def rss_mb() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak so far)."""
    return memory_status_mb("VmRSS").get("VmRSS") or _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def fixed_allocator_thresholds() -> None:
    """glibc's malloc maps every block above a threshold afresh (its pages faulted in at each
    call) and raises the threshold to the largest such block freed so far, so how fast large
    tensors are allocated depends on what ran before in the process: the original EfficientAT's
    batches of 4 ran at 27 to 100 clips/s across the rounds of one run, and the tower alone ran a
    fifth slower in its second run of a process than from its fourth on. Thresholds fixed above
    any block here give every variant its steady state in every round. Only in benchmark
    processes (the embedding and catalogue workers); the library leaves the allocator alone."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 256 << 20)
    libc.mallopt(m_trim_threshold, 512 << 20)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(fn, units: int, device: str, min_seconds: float = 4.0, max_calls: int = 50) -> float:
    """Units per second of `fn` (after two warm-up calls: oneDNN builds its kernels for each new
    shape on first use), timed over at least `min_seconds`."""
    fn()
    fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - start < min_seconds):
        fn()
        calls += 1
    _sync(device)
    return calls * units / (time.perf_counter() - start)


def unit_vector_chunks(n: int, dim: int, seed: int, structured: bool) -> Iterator[torch.Tensor]:
    """`_unit_vectors` in chunks of up to 65,536 rows, so that a store larger than memory can be
    written chunk by chunk (the same vectors as `_unit_vectors`)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, dim, generator=torch.Generator().manual_seed(99)) / 4.0
    for start in range(0, n, 1 << 16):
        rows = min(1 << 16, n - start)
        x = torch.randn(rows, dim, generator=generator)
        if structured:
            x = torch.randn(rows, 16, generator=generator) @ basis + 0.3 / dim ** 0.5 * x
        yield torch.nn.functional.normalize(x, dim=1)


def _unit_vectors(n: int, dim: int, seed: int, structured: bool) -> torch.Tensor:
    """n random unit vectors, made in chunks (memory stays at the result). structured: near a
    random 16-dimensional subspace (a fixed linear map of 16-d Gaussian codes, plus isotropic noise
    of 0.3 of a code's length), so that neighbourhoods are continuous and cross the IVF cells, as
    learned embeddings' do; uniform random vectors (IVF's worst case) otherwise."""
    out = torch.empty(n, dim)
    for start, chunk in zip(range(0, n, 1 << 16), unit_vector_chunks(n, dim, seed, structured)):
        out[start:start + len(chunk)] = chunk
    return out


def measure_search(backend: str, n: int, dim: int, device: str, structured: bool) -> dict:
    from hybrid_retrieval.index.backends.base import recall_at_k
    from hybrid_retrieval.index.backends.exact import exact_search

    items = _unit_vectors(n, dim, 0, structured)
    queries = _unit_vectors(1200, dim, 1, structured)
    result: dict = {}
    if backend == "ivf":
        from hybrid_retrieval.index.backends.faiss_backend import FaissBackend

        started = time.perf_counter()
        index = FaissBackend()
        index.build(items, kind="ivf", target_recall=0.95, queries=queries[:200], progress=False)
        result["build_s"] = round(time.perf_counter() - started, 1)
        result["setting"] = f"{index.settings['factory']}, {index.settings['parameter']}={index.settings['value']}"
        held_out = queries[200:400]
        found = index.search(held_out, 10)[1]
        result["recall@10"] = round(recall_at_k(found, exact_search(items, held_out, 10)[1]), 4)

        def search(q: torch.Tensor) -> None:
            index.search(q, 10)
    elif backend == "faiss":  # FAISS's brute-force kernel (IndexFlatIP's), without copying the items
        import faiss

        def search(q: torch.Tensor) -> None:
            faiss.knn(q.numpy(), items.numpy(), 10, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        items, queries = items.to(device), queries.to(device)

        def search(q: torch.Tensor) -> None:
            exact_search(items, q, 10)
    setup_rss = rss_mb()
    place = device if backend == "torch" else "cpu"
    singles = iter(range(400, 1200))
    result["qps_1"] = _rate(lambda: search(queries[next(singles)][None]), 1, place, max_calls=200)
    result["qps_64"] = _rate(lambda: search(queries[400:464]), 64, place, max_calls=20)
    return {**result, "setup_rss_mb": setup_rss}


def measure_train(mode: str, device: str, root: str, limit_items: int, steps: int, batch_size: int) -> dict:
    """Seconds per step of the training loop's own step (provider inputs + `train_step`: forward,
    loss, backward, clipping, AdamW). Frozen: cached tower outputs, heads train; finetune: both
    towers train on 10-s crops."""
    import tempfile

    from hybrid_retrieval.training.config import split_config
    from hybrid_retrieval.training.loop import build_model, load_items, training_data

    frozen = mode == "frozen"
    flat = {"dataset": "synthmusic", "data_root": root, "limit_items": limit_items, "batch_size": batch_size,
            "freeze_audio": frozen, "freeze_text": frozen, "progress": False}
    model_config, cfg = split_config(flat)
    torch.manual_seed(0)
    # frozen as the mode says even where no pretrained weights are found (speed does not depend on them)
    model = build_model(model_config, cfg).freeze(audio=frozen, text=frozen).to(device).train()
    items = load_items(cfg, cfg.train_split)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        data = training_data(model, cfg, items, cache if frozen else None, progress=False)
    cache_s = time.perf_counter() - started
    setup_rss = rss_mb()
    times = time_train_steps(model, cfg, data, device, steps)
    return {"step_s": statistics.median(times), "steps": steps, "cache_s": round(cache_s, 1) if frozen else None,
            "cached_items": len(items) if frozen else None, "setup_rss_mb": setup_rss}


def time_train_steps(model, cfg, data, device: str, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps (the provider's inputs + `train_step`: forward,
    loss, backward, clipping, AdamW) on the batches of `data` (a `training_data`), after one
    warm-up step (allocations, oneDNN primitives)."""
    from hybrid_retrieval.losses import ContrastiveLoss
    from hybrid_retrieval.training.loop import optimizer_and_schedule, train_step

    optimizer, _ = optimizer_and_schedule(model, cfg, len(data.sampler))
    loss_fn = ContrastiveLoss(cfg.loss)
    times: list[float] = []
    batches = iter(data.loader)
    for _ in range(steps + 1):
        batch = next(batches)
        _sync(device)
        start = time.perf_counter()
        train_step(model, model, loss_fn, optimizer, data.provider(batch, torch.device(device)),
                   batch["item"].to(device), cfg.grad_clip, use_amp=device.startswith("cuda"))
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def measure_load(mode: str, path: str, repeats: int, device: str) -> dict:
    """Seconds per random 10-s crop of `path` (median of `repeats`): "whole" decodes and resamples
    the whole file, then slices (what a crop cost before windowed reads); "window" is training's
    `random_crop`, which reads the header and decodes only the window."""
    from hybrid_retrieval.audio.io import audio_info, load_audio
    from hybrid_retrieval.training.data import random_crop

    length = int(CLIP_SECONDS * SAMPLE_RATE)
    total = audio_info(path).length()
    generator = torch.Generator().manual_seed(0)
    setup_rss, times = rss_mb(), []
    for _ in range(repeats):
        started = time.perf_counter()
        if mode == "whole":
            start = int(torch.randint(total - length + 1, (1,), generator=generator))
            crop = load_audio(path)[start:start + length]
        else:
            crop = random_crop(path, length, generator)
        times.append(time.perf_counter() - started)
        assert len(crop) == length
    return {"crop_s": statistics.median(times), "setup_rss_mb": setup_rss}


def measure_embed_file(mode: str, path: str, model: str, device: str) -> dict:
    """Seconds to embed one whole file as `tag` does (`embed_audio_files`): "window" reads and
    embeds it in 10-s windows (the default), "whole" in one forward pass (--window-seconds 0)."""
    from hybrid_retrieval.audio.tower import create_audio_tower
    from hybrid_retrieval.embedding import embed_audio_files

    tower = create_audio_tower(f"efficientat:{model}", pretrained=False).to(device).eval()  # speed only
    runner = tower.inference_copy()
    tower.embed_waveforms([torch.zeros(int(CLIP_SECONDS * SAMPLE_RATE))] * 4, runner=runner)  # warm-up: oneDNN kernels
    setup_rss = rss_mb()
    _sync(device)
    started = time.perf_counter()
    out = embed_audio_files(tower, [path], window_seconds=CLIP_SECONDS if mode == "window" else 0, runner=runner)[0]
    _sync(device)
    return {"seconds": time.perf_counter() - started, "windows_tokens": int(out.tokens.shape[1]),
            "setup_rss_mb": setup_rss}


def write_noise_wav(path: Path, seconds: float, rate: int = 44_100, seed: int = 0) -> Path:
    """A 16-bit mono WAV of quiet Gaussian noise, generated and written a minute at a time."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total, block = int(seconds * rate), 60 * rate
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16", format="WAV") as handle:
        for start in range(0, total, block):
            handle.write((rng.standard_normal(min(block, total - start), dtype=np.float32) * 0.1))
    return path


MEASUREMENTS = {"embed": "hybrid_retrieval.experiments.embed_speed:measure_audio",
                "text": "hybrid_retrieval.experiments.embed_speed:measure_text", "search": measure_search,
                "train": measure_train, "load": measure_load, "embed_file": measure_embed_file,
                "catalogue": "hybrid_retrieval.experiments.catalogue_speed:measure_catalogue",
                "coldstart": "hybrid_retrieval.experiments.catalogue_speed:prepare_coldstart",
                "scale": "hybrid_retrieval.experiments.scale_bench:measure_scale",
                "dryrun_loader": "hybrid_retrieval.experiments.dryrun:measure_loader",
                "dryrun_step": "hybrid_retrieval.experiments.dryrun:measure_step"}


def worker(kind: str, params: dict) -> None:
    if params["device"] == "cpu" and params.get("threads"):
        torch.set_num_threads(params["threads"])
    measure = MEASUREMENTS[kind]
    if isinstance(measure, str):
        measure = import_object(measure)
    result = measure(**{k: v for k, v in params.items() if k != "threads"})
    result["peak_rss_mb"] = _peak_rss_mb()
    if params["device"].startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("RESULT " + json.dumps(result))


# -- orchestration ---------------------------------------------------------------------------------------

def run_worker(kind: str, **params) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hybrid_retrieval.experiments.speed",
                           "--worker", kind, json.dumps(params)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} {params} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {kind} {params}: {result}", flush=True)
    return result


def machine(device: str) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": datetime.now().astimezone().isoformat(timespec="minutes"), "cpu": cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "load_before": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv)}
    for module in ("faiss", "onnxruntime", "openvino", "sentence_transformers"):
        with contextlib.suppress(ImportError):
            info[module] = importlib.import_module(module).__version__
    return info


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def bench_embed(args: argparse.Namespace) -> str:
    """The audio embedding variants, interleaved over --rounds rounds in one process (embed_speed)."""
    from hybrid_retrieval.experiments.embed_speed import audio_table

    print("embed: audio", flush=True)
    m = run_worker("embed", device=args.device, model=args.audio_model, rounds=args.rounds,
                   min_seconds=args.min_seconds, efficientat_repo=args.efficientat_repo, compile=args.compile,
                   threads=args.threads)
    notes = [f"runtime chosen by auto: {m['auto']}",
             f"RSS after setup / peak: {mb(m['setup_rss_mb'])} / {mb(m['peak_rss_mb'])} MB"]
    if "embedding_difference" in m:
        notes.append("embeddings of the original and the project, same weights: largest difference "
                     f"{m['embedding_difference']:.1e} of the largest value")
    return audio_table(m, f"{args.audio_model}, {args.device}, fp32, 10-s clips") + "\n\n" + "; ".join(notes)


def bench_text(args: argparse.Namespace) -> str:
    """Captions/s of the text tower against sentence-transformers, interleaved (embed_speed)."""
    from hybrid_retrieval.experiments.embed_speed import text_table

    print("embed: text", flush=True)
    m = run_worker("text", device=args.device, rounds=args.rounds, batch_sizes=args.text_batch_sizes,
                   min_seconds=args.min_seconds, threads=args.threads)
    notes = [f"{m['captions']} SynthMusic captions",
             ("largest |difference| of the L2-normalised embeddings (text normalisation off): "
              f"{m['max_embedding_difference']:.1e}"),
             f"RSS after setup / peak: {mb(m['setup_rss_mb'])} / {mb(m['peak_rss_mb'])} MB"]
    return text_table(m, f"all-MiniLM-L6-v2, {args.device}, fp32") + "\n\n" + "; ".join(notes)


def bench_search(args: argparse.Namespace) -> str:
    rows = {}
    device_label = {"torch": args.device, "faiss": "cpu", "ivf": "cpu"}
    for n in args.sizes:
        for backend, structured in (("torch", False), ("faiss", False), ("ivf", False), ("ivf", True)):
            print(f"search, n={n:,}, {backend}{' (structured)' if structured else ''}", flush=True)
            m = run_worker("search", backend=backend, n=n, dim=args.dim, device=args.device, structured=structured,
                           threads=args.threads)
            name = {"torch": "exact, torch matmul + top-k", "faiss": "exact, FAISS flat (IndexFlatIP kernel)",
                    "ivf": "approximate, FAISS IVF"}[backend]
            rows[f"{n:,}: {name}{', structured data' if structured else ''}"] = {
                "device": device_label[backend],
                "queries/s, 1 per call": f"{m['qps_1']:,.1f}",
                "queries/s, 64 per call": f"{m['qps_64']:,.1f}",
                "recall@10": f"{m['recall@10']:.3f}" if "recall@10" in m else "1 (exact)",
                "setting; build s": f"{m['setting']}; {m['build_s']}" if "setting" in m else "",
                "RSS after setup / peak, MB": f"{mb(m['setup_rss_mb'])} / {mb(m['peak_rss_mb'])}",
            }
    columns = ["device", "queries/s, 1 per call", "queries/s, 64 per call", "recall@10", "setting; build s",
               "RSS after setup / peak, MB"]
    return markdown_table(rows, columns, f"items: search (d = {args.dim})")


def bench_train(args: argparse.Namespace) -> str:
    rows = {}
    for mode in ("frozen", "finetune"):
        print(f"train, {mode}", flush=True)
        m = run_worker("train", mode=mode, device=args.device, root=args.synthmusic, limit_items=args.train_items,
                       steps=args.train_steps, batch_size=args.batch_size, threads=args.threads)
        rows[{"frozen": "frozen towers, cached features", "finetune": "full fine-tuning (both towers)"}[mode]] = {
            "s/step (median)": f"{m['step_s']:.3f}",
            "pairs/s": f"{args.batch_size / m['step_s']:,.1f}",
            "one-off feature caching": f"{m['cache_s']} s for {m['cached_items']} clips" if m["cache_s"] else "none",
            "RSS after setup / peak, MB": f"{mb(m['setup_rss_mb'])} / {mb(m['peak_rss_mb'])}",
            **({"peak CUDA MB": mb(m["peak_cuda_mb"])} if args.device.startswith("cuda") else {}),
        }
    columns = list(next(iter(rows.values())).keys())
    return markdown_table(rows, columns, f"mn04_minilm, batch {args.batch_size}, {args.device}")


def bench_load(args: argparse.Namespace) -> str:
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="hybrid_retrieval_bench_", dir=args.scratch))
    try:
        crops, files = {}, {}
        for minutes in args.load_minutes:
            label = f"{minutes:g} min" if minutes < 60 else f"{minutes / 60:g} h"
            print(f"load, {label}: writing the file", flush=True)
            path = str(write_noise_wav(scratch / f"{minutes:g}min.wav", minutes * 60))
            size_mb = Path(path).stat().st_size / 2 ** 20
            m = {mode: run_worker("load", mode=mode, path=path, repeats=args.load_repeats, device="cpu",
                                  threads=args.threads) for mode in ("whole", "window")}
            crops[f"{label} ({size_mb:,.0f} MB)"] = {
                "whole file: s/crop": f"{m['whole']['crop_s']:.3f}",
                "window: s/crop": f"{m['window']['crop_s']:.4f}",
                "whole / window": f"{m['whole']['crop_s'] / m['window']['crop_s']:,.0f}x",
                "whole file: peak RSS, MB": mb(m["whole"]["peak_rss_mb"]),
                "window: peak RSS, MB": mb(m["window"]["peak_rss_mb"]),
                "RSS after setup, MB": mb(m["window"]["setup_rss_mb"]),
            }
            modes = [mode for mode, limit in (("window", None), ("whole", args.whole_pass_minutes))
                     if limit is None or minutes <= limit]
            for mode in modes:
                e = run_worker("embed_file", mode=mode, path=path, model=args.audio_model, device=args.device,
                               threads=args.threads)
                files[f"{label}, {'10-s windows (default)' if mode == 'window' else 'one pass (--window-seconds 0)'}"] = {
                    "s": f"{e['seconds']:.1f}",
                    "audio s per s": f"{minutes * 60 / e['seconds']:,.0f}",
                    "peak RSS, MB": mb(e["peak_rss_mb"]),
                    "RSS after setup, MB": mb(e["setup_rss_mb"]),
                    **({"peak CUDA MB": mb(e["peak_cuda_mb"])} if args.device.startswith("cuda") else {}),
                }
            Path(path).unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    crop_table = markdown_table(crops, list(next(iter(crops.values())).keys()),
                                "one random 10-s crop of a 44.1-kHz WAV")
    file_table = markdown_table(files, list(next(iter(files.values())).keys()),
                                f"embedding a whole file ({args.audio_model}, {args.device})")
    return crop_table + "\n\n" + file_table


def run_benchmarks(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--only", default="embed,text,search,train,load,catalogue,coldstart",
                        help="comma-separated subset of embed,text,search,train,load,catalogue,coldstart,scale "
                             "(scale: about 20 min at 10M items on 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measurement (CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the embedding variants")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time of each embedding variant per round")
    parser.add_argument("--audio-model", default="mn04_as", help="EfficientAT model of the embedding benchmark")
    parser.add_argument("--efficientat-repo", default=None, metavar="DIR",
                        help="a checkout of the original EfficientAT (github.com/fschmid56/EfficientAT), run "
                             "beside the project's tower; it needs torchaudio importable (not a dependency)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="add a torch.compile embedding row (default: on CUDA only)")
    parser.add_argument("--text-batch-sizes", default="32,256",
                        help="batch sizes of the text embedding benchmark (comma-separated)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes of the search benchmark")
    parser.add_argument("--dim", type=int, default=1024, help="embedding size (default: the models' 1024)")
    parser.add_argument("--scale-items", type=int, default=10_000_000, help="catalogue size of the scale benchmark")
    parser.add_argument("--scale-added", type=int, default=10_000, help="items added and removed by its update step")
    parser.add_argument("--scale-dir", default=tempfile.gettempdir(),
                        help="where its float16 store is written (2 bytes x d x items; deleted afterwards)")
    parser.add_argument("--synthmusic", default="data/synthmusic", help="SynthMusic root of the training benchmark")
    parser.add_argument("--train-items", type=int, default=128, help="clips the frozen mode caches")
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--load-minutes", default="1,10,60,120", help="file lengths of the load benchmark (minutes)")
    parser.add_argument("--load-repeats", type=int, default=3, help="crops timed per file and mode")
    parser.add_argument("--whole-pass-minutes", type=float, default=10,
                        help="longest file embedded in one pass too (its memory grows with the file)")
    parser.add_argument("--scratch", default=None, help="folder for the load benchmark's files (default: the "
                                                        "system's temporary folder; deleted afterwards)")
    parser.add_argument("--catalogue-files", type=int, default=200, help="generated clips of the catalogue benchmark")
    parser.add_argument("--cold-runs", type=int, default=5, help="new processes per cold-start measurement")
    parser.add_argument("--out", default="results/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.load_minutes = [float(m) for m in args.load_minutes.split(",")]
    args.text_batch_sizes = [at_least_one(s) for s in args.text_batch_sizes.split(",")]
    if args.efficientat_repo and "embed" in args.only.split(","):
        from hybrid_retrieval.experiments.embed_speed import check_efficientat_repo

        args.efficientat_repo = str(check_efficientat_repo(args.efficientat_repo))
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    info = machine(args.device)
    sections = {"embed": ("Audio embedding throughput (10-s clips/s)", bench_embed),
                "text": ("Text embedding throughput (captions/s)", bench_text),
                "search": ("Search, top-10 (random unit vectors)", bench_search),
                "train": ("Training step time (SynthMusic)", bench_train),
                "load": ("Long recordings: windowed reading and embedding", bench_load),
                "catalogue": ("From files to index: end to end against the tower alone (files/s)",
                              "hybrid_retrieval.experiments.catalogue_speed:bench_catalogue"),
                "coldstart": ("Text search from a cold start", "hybrid_retrieval.experiments.catalogue_speed:bench_coldstart"),
                "scale": ("Search at scale: IVF-PQ with re-ranking from a float16 store on disk",
                          "hybrid_retrieval.experiments.scale_bench:bench_scale")}
    tables = {}
    for name in args.only.split(","):
        title, bench = sections[name]
        tables[title] = (import_object(bench) if isinstance(bench, str) else bench)(args)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = "\n".join(f"- {key}: {value}" for key, value in info.items())
    markdown = header + "\n\n" + "\n\n".join(f"### {title}\n\n{table}" for title, table in tables.items()) + "\n"
    (out / "bench.md").write_text(markdown)
    (out / "bench.json").write_text(json.dumps({"machine": info, "tables": tables}, indent=1))
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmarks())
