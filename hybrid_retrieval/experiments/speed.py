"""Speed and scale benchmarks: audio embedding, search, training steps, and the memory of each.

    python scripts/bench.py                                   # all three on this machine's CPU
    python scripts/bench.py --only search --sizes 10000,100000
    python scripts/bench.py --device cuda                     # on a GPU: adds bf16 and torch.compile rows

(`scripts/bench.py` calls `run_benchmarks` here.) Every measurement runs in its own subprocess
(`python -m hybrid_retrieval.experiments.speed --worker KIND JSON`), so its peak memory is that process's maximum
resident set size (getrusage ru_maxrss; on CUDA also torch.cuda.max_memory_allocated), with
the resident size after its setup beside it. Throughputs are compared as ratios within one run:
the embedding variants are interleaved over `--rounds` rounds and each ratio is the median of
the per-round ratios, so load from other processes on a shared machine hits both sides alike.
Results go to stdout and to --out (JSON and Markdown); every row names the device it ran on.

1. embed: 10-s clips/s of the EfficientAT tower, fp32: the project's `embed_waveforms` at batch
   1 and 32 against a reference loop (one clip at a time, eval mode, no no_grad/inference_mode,
   front end + backbone per clip), plus variants that say what each inference choice gives.
2. search: queries/s for top-10 over n random unit vectors (d = the model's embedding size):
   exact torch (matmul + top-k), exact FAISS (its IndexFlatIP kernel), and the approximate
   IVF index tuned to recall@10 >= 0.95, with its build time and recall measured on held-out
   queries. Uniform random unit vectors have no structure, IVF's worst case; structured vectors
   (near a random 16-d subspace, neighbourhoods continuous like learned embeddings') are
   measured for IVF too.
3. train: seconds per optimizer step on SynthMusic, frozen towers on cached features against full
   fine-tuning of both towers, with the one-off feature caching time of the frozen mode.
4. scale (only when asked: `--only scale`): a 10M-item catalogue of structured vectors as a
   float16 store on disk (written under --scale-dir, deleted afterwards) searched through an
   IVF-PQ index with exact re-ranking from the memory-mapped store: build time, recall@10 against
   exact search and single-query rate over a grid of nprobe and re-ranking depths, the memory of
   the searching process, and the time to add and remove items against the rebuild.
"""
from __future__ import annotations

import argparse
import copy
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

import numpy as np
import torch

from hybrid_retrieval.audio.io import SAMPLE_RATE
from hybrid_retrieval.report import markdown_table

CLIP_SECONDS = 10.0
EMBED_VARIANTS = ("reference", "batch1", "batch32", "batch32-plain", "batch32-one-forward")
EMBED_LABELS = {
    "reference": "reference loop (per clip, autograd on)",
    "batch1": "embed_waveforms, batch 1",
    "batch32": "embed_waveforms, batch 32",
    "batch32-plain": "  without folded batch norms and channels-last (plain eval copy)",
    "batch32-one-forward": "  without the CPU cap: all 32 in one forward",
    "batch32-compile": "  plus torch.compile of the tower's forward (not adopted)",
    "batch32-bf16": "  plus bf16 autocast",
}


# -- measurements (each runs in a subprocess: `bench.py --worker KIND JSON`) -------------------------------

def _rss_mb() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


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


def measure_embed(variant: str, device: str, model: str) -> dict:
    from hybrid_retrieval.audio.tower import create_audio_tower

    tower = create_audio_tower(f"efficientat:{model}", pretrained=False).to(device).eval()  # speed only
    generator = torch.Generator().manual_seed(0)
    clips = [torch.randn(int(CLIP_SECONDS * SAMPLE_RATE), generator=generator) * 0.1 for _ in range(32)]
    result = {}
    options: dict = {}  # embed_waveforms' keyword arguments of the variant
    if variant == "batch32-one-forward":
        options["max_forward_samples"] = sys.maxsize
    elif variant == "batch32-plain":
        options["runner"] = copy.deepcopy(tower).eval()
    elif variant == "batch32-compile":  # one compiled inference copy, reused (the weights do not change here)
        runner = tower.inference_copy()
        runner.forward = torch.compile(runner.forward)
        options["runner"] = runner
        started = time.perf_counter()
        tower.embed_waveforms(clips, batch_size=32, **options)
        result["compile_s"] = round(time.perf_counter() - started, 1)
    setup_rss = _rss_mb()

    if variant == "reference":
        def run() -> None:
            for wave in clips[:4]:
                tower.backbone(tower.frontend(wave[None].to(device)))
        rate = _rate(run, 4, device)
    elif variant == "batch1":
        rate = _rate(lambda: tower.embed_waveforms(clips[:8], batch_size=1), 8, device)
    elif variant == "batch32-bf16":
        def run() -> None:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                tower.embed_waveforms(clips, batch_size=32)
        rate = _rate(run, 32, device)
    else:
        rate = _rate(lambda: tower.embed_waveforms(clips, batch_size=32, **options), 32, device)
    return {**result, "clips_per_s": rate, "setup_rss_mb": setup_rss}


def _unit_vector_chunks(n: int, dim: int, seed: int, structured: bool) -> Iterator[torch.Tensor]:
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
    for start, chunk in zip(range(0, n, 1 << 16), _unit_vector_chunks(n, dim, seed, structured)):
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
    setup_rss = _rss_mb()
    place = device if backend == "torch" else "cpu"
    singles = iter(range(400, 1200))
    result["qps_1"] = _rate(lambda: search(queries[next(singles)][None]), 1, place, max_calls=200)
    result["qps_64"] = _rate(lambda: search(queries[400:464]), 64, place, max_calls=20)
    return {**result, "setup_rss_mb": setup_rss}


def _rss_parts() -> dict:
    """Resident memory now, anonymous (the process's own) and file-backed (mapped pages of the
    store it has touched, which the kernel may drop), in MB (Linux /proc)."""
    parts = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            parts[key] = int(value.split()[0]) / 1024
    return parts


def _scale_store(root: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(root / "store.f16.npy", mmap_mode="c"))


def measure_scale(step: str, root: str, n: int, added: int, dim: int, tune: int, held_out: int,
                  device: str) -> dict:
    """One step of the scale benchmark over the files in `root` (see `bench_scale`):
    data (write n + added structured vectors as a float16 store, and the queries), truth (exact
    top-10 of the held-out queries over the first n, in chunks), build (an IVF-PQ backend over the
    first n, tuned on `tune` queries, saved, and the time of the tuning's exact search, which is
    also what re-measuring the recall after an update costs), search (load it with the store
    mapped: recall and single-query rate over a grid of settings), update (add the `added` rows to
    the trained index, then remove as many)."""
    from hybrid_retrieval.index.backends.base import RecallProbe, recall_at_k
    from hybrid_retrieval.index.backends.exact import exact_search
    from hybrid_retrieval.index.backends.faiss_backend import FaissBackend

    folder, result = Path(root), {}
    started = time.perf_counter()
    if step == "data":
        store = np.lib.format.open_memmap(folder / "store.f16.npy", "w+", np.float16, (n + added, dim))
        for first, chunk in zip(range(0, n + added, 1 << 16), _unit_vector_chunks(n + added, dim, 0, True)):
            store[first:first + len(chunk)] = chunk.half().numpy()
        store.flush()
        np.save(folder / "queries.npy", _unit_vectors(tune + held_out, dim, 1, True).numpy())
        result["store_gb"] = round((folder / "store.f16.npy").stat().st_size / 1e9, 2)
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    if step == "truth":
        np.save(folder / "truth.npy", exact_search(_scale_store(folder)[:n], queries[tune:], 10)[1].numpy())
    if step == "build":
        backend = FaissBackend()
        backend.build(_scale_store(folder)[:n], kind="ivfpq", queries=queries[:tune], progress=False)
        result["build_s"] = round(time.perf_counter() - started, 1)
        probe_started = time.perf_counter()  # the share of the build that was the tuning's exact search
        RecallProbe.make(_scale_store(folder)[:n], queries[:tune])
        result["tuning_truth_s"] = round(time.perf_counter() - probe_started, 1)
        settings, tensors = backend.save()
        tensors["faiss"].numpy().tofile(folder / "ivfpq.faiss")
        (folder / "settings.json").write_text(json.dumps(settings))
        result.update(settings=settings, index_mb=round((folder / "ivfpq.faiss").stat().st_size / 1e6))
    if step in ("search", "update"):
        settings = json.loads((folder / "settings.json").read_text())
        blob = torch.from_numpy(np.fromfile(folder / "ivfpq.faiss", dtype=np.uint8))
        backend = FaissBackend.load(settings, {"faiss": blob, "faiss_rows": torch.arange(n)}, _scale_store(folder)[:n])
        del blob
        result["load_s"] = round(time.perf_counter() - started, 1)
        result["rss_after_load_mb"] = _rss_mb()
    if step == "search":
        truth = torch.from_numpy(np.load(folder / "truth.npy"))
        held = queries[tune:]
        chosen, curve = list(settings["value"]), []
        for nprobe in (8, 16, 32, 64, 128):
            for rerank in (2, 5, 10, 20, 50, 100):
                backend.use_setting([nprobe, rerank])
                recall = recall_at_k(backend.search(held, 10)[1], truth)
                singles = iter(range(len(held)))
                rate = _rate(lambda: backend.search(held[next(singles) % len(held)][None], 10), 1, "cpu",
                             min_seconds=2.0, max_calls=200)
                curve.append({"nprobe": nprobe, "rerank": rerank, "recall@10": round(recall, 4), "qps_1": rate})
        result.update(curve=curve, chosen=chosen, **_rss_parts())
    if step == "update":
        full = _scale_store(folder)
        timed = {}
        begin = time.perf_counter()
        backend.add(full, n)
        timed["add_s"] = time.perf_counter() - begin
        begin = time.perf_counter()
        gone = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:added].sort().values
        backend.remove(gone.tolist(), full)  # rows after the removed ones move up; the matrix is not searched here
        timed["remove_s"] = time.perf_counter() - begin
        result.update({key: round(value, 2) for key, value in timed.items()})
        result["ntotal"] = backend.index.ntotal
    return result


def measure_train(mode: str, device: str, root: str, limit_items: int, steps: int, batch_size: int) -> dict:
    """Seconds per step of the training loop's own step (provider inputs + `train_step`: forward,
    loss, backward, clipping, AdamW). Frozen: cached tower outputs, heads train; finetune: both
    towers train on 10-s crops."""
    import tempfile

    from hybrid_retrieval.losses import ContrastiveLoss
    from hybrid_retrieval.training.config import split_config
    from hybrid_retrieval.training.loop import (
        build_model,
        load_items,
        optimizer_and_schedule,
        train_step,
        training_data,
    )

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
    optimizer, _ = optimizer_and_schedule(model, cfg, len(data.sampler))
    loss_fn = ContrastiveLoss(cfg.loss)
    setup_rss, times = _rss_mb(), []
    batches = iter(data.loader)
    for _ in range(steps + 1):  # the first step warms up (allocations, oneDNN primitives)
        batch = next(batches)
        _sync(device)
        start = time.perf_counter()
        train_step(model, model, loss_fn, optimizer, data.provider(batch, torch.device(device)),
                   batch["item"].to(device), cfg.grad_clip, use_amp=device.startswith("cuda"))
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:]), "steps": steps, "cache_s": round(cache_s, 1) if frozen else None,
            "cached_items": len(items) if frozen else None, "setup_rss_mb": setup_rss}


def worker(kind: str, params: dict) -> None:
    if params["device"] == "cpu" and params.get("threads"):
        torch.set_num_threads(params["threads"])
    result = {"embed": measure_embed, "search": measure_search, "train": measure_train, "scale": measure_scale}[kind](
        **{k: v for k, v in params.items() if k != "threads"})
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
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def bench_embed(args: argparse.Namespace) -> str:
    variants = list(EMBED_VARIANTS)
    if args.device.startswith("cuda"):
        variants.append("batch32-bf16")
    if args.compile:
        variants.append("batch32-compile")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        print(f"embed, round {r + 1}/{args.rounds}", flush=True)
        for variant in variants:
            runs[variant].append(run_worker("embed", variant=variant, device=args.device, model=args.audio_model,
                                            threads=args.threads))
    rows = {}
    for variant in variants:
        rates = [m["clips_per_s"] for m in runs[variant]]
        ratios = [m["clips_per_s"] / ref["clips_per_s"] for m, ref in zip(runs[variant], runs["reference"])]
        rows[EMBED_LABELS[variant]] = {
            "clips/s (median)": f"{statistics.median(rates):.1f}",
            "per round": " / ".join(f"{x:.1f}" for x in rates),
            "× reference (median of rounds)": f"{statistics.median(ratios):.2f}",
            "RSS after setup / peak, MB": f"{mb(statistics.median(m['setup_rss_mb'] for m in runs[variant]))} / "
                                          f"{mb(max(m['peak_rss_mb'] for m in runs[variant]))}",
            **({"peak CUDA MB": mb(max(m["peak_cuda_mb"] for m in runs[variant]))}
               if args.device.startswith("cuda") else {}),
            **({"compile s": str(runs[variant][0]["compile_s"])} if "compile_s" in runs[variant][0] else {}),
        }
    order = ["clips/s (median)", "× reference (median of rounds)", "per round", "RSS after setup / peak, MB",
             "peak CUDA MB", "compile s"]
    columns = [c for c in order if any(c in row for row in rows.values())]
    return markdown_table(rows, columns, f"{args.audio_model}, {args.device}, fp32")


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


def bench_scale(args: argparse.Namespace) -> str:
    """A catalogue of --scale-items structured vectors (d = --dim) searched through an IVF-PQ index
    with exact re-ranking from a float16 store memory-mapped from disk (written under
    --scale-dir, deleted afterwards): build time, the recall/rate curve, memory, update times."""
    import shutil

    n, added, tune, held_out = args.scale_items, args.scale_added, 200, 500
    need = (n + added) * args.dim * 2
    Path(args.scale_dir).mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(args.scale_dir).free < 1.1 * need:
        raise SystemExit(f"{args.scale_dir} has {shutil.disk_usage(args.scale_dir).free / 1e9:.1f} GB free; "
                         f"the store needs {need / 1e9:.1f} GB")
    root = tempfile.mkdtemp(prefix="hybrid-retrieval-scale-", dir=args.scale_dir)
    common = {"root": root, "n": n, "added": added, "dim": args.dim, "tune": tune, "held_out": held_out,
              "device": "cpu", "threads": args.threads}
    try:
        steps = {}
        for step in ("data", "truth", "build", "search", "update"):
            print(f"scale, {step} ({n:,} items)", flush=True)
            began = time.perf_counter()
            steps[step] = run_worker("scale", step=step, **common)
            steps[step]["wall_s"] = round(time.perf_counter() - began, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    build, search, update = steps["build"], steps["search"], steps["update"]
    settings = build["settings"]
    summary = {
        "catalogue": {"value": f"{n:,} x {args.dim} structured unit vectors; float16 store "
                               f"{steps['data']['store_gb']} GB on disk (memory-mapped)"},
        "writing the store": {"value": f"{steps['data']['wall_s']} s"},
        "exact top-10 of the held-out queries": {"value": f"{steps['truth']['wall_s']} s for {held_out} queries "
                                                          "(chunks of the mapped store)"},
        "build (train + add + tune)": {"value": f"{build['build_s']} s, of which {build['tuning_truth_s']} s the "
                                                f"exact top-10 of the {tune} tuning queries; peak RSS "
                                                f"{mb(build['peak_rss_mb'])} MB"},
        "index": {"value": f"{settings['factory']}: {build['index_mb']:,} MB of codes and lists"},
        "tuned to": {"value": f"nprobe={settings['value'][0]}, re-rank {settings['value'][1]} x k: recall@10 "
                              f"{settings['recall@10']} on the {tune} tuning queries"},
        "search process memory": {"value": f"RSS after load {mb(search['rss_after_load_mb'])} MB; peak "
                                           f"{mb(search['peak_rss_mb'])} MB; at the end "
                                           f"{mb(search['RssAnon'])} MB anonymous + {mb(search['RssFile'])} MB "
                                           "mapped store pages"},
        f"update: add {added:,} items": {"value": f"{update['add_s']} s (encoded into the trained cells)"},
        f"update: remove {added:,} items": {"value": f"{update['remove_s']} s"},
        "update: re-measure the recall": {"value": f"{build['tuning_truth_s']} s (the tuning queries' exact search)"},
    }
    chosen = search["chosen"]
    curve = {f"nprobe {point['nprobe']}, re-rank {point['rerank']} x k"
             f"{' (tuned)' if [point['nprobe'], point['rerank']] == chosen else ''}": {
                 "recall@10 (held-out)": f"{point['recall@10']:.3f}",
                 "queries/s, 1 per call": f"{point['qps_1']:,.1f}"} for point in search["curve"]}
    return (markdown_table(summary, ["value"], f"IVF-PQ at {n:,} items") + "\n\n"
            + markdown_table(curve, ["recall@10 (held-out)", "queries/s, 1 per call"],
                             f"recall vs rate ({held_out} held-out queries)"))


def run_benchmarks(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--only", default="embed,search,train",
                        help="comma-separated subset of embed,search,train,scale (scale: about an hour at 10M)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measurement (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the embedding variants")
    parser.add_argument("--audio-model", default="mn04_as", help="EfficientAT model of the embedding benchmark")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="add a torch.compile embedding row (default: on CUDA only)")
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
    parser.add_argument("--out", default="results/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    info = machine(args.device)
    sections = {"embed": ("Audio embedding throughput (10-s clips/s)", bench_embed),
                "search": ("Search, top-10 (random unit vectors)", bench_search),
                "train": ("Training step time (SynthMusic)", bench_train),
                "scale": ("Search at scale: IVF-PQ with re-ranking from a float16 store on disk", bench_scale)}
    tables = {}
    for name in args.only.split(","):
        title, bench = sections[name]
        tables[title] = bench(args)
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
