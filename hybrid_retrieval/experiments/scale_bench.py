"""The scale section of `scripts/bench.py` (`--only scale`): a catalogue far larger than memory.

    python scripts/bench.py --only scale                       # 10M x 1024 (a 20-GB store under /tmp)
    python scripts/bench.py --only scale --scale-items 200000 --scale-dir /data/tmp

n structured unit vectors (`speed._unit_vectors`, d = --dim) are written as a float16 store on
disk (under --scale-dir, deleted afterwards) and searched through the FAISS IVF-PQ backend with
exact re-ranking from the store memory-mapped, as an index built with `--approximate ivfpq`
searches its items. Each step runs in its own process (`speed.run_worker`): data (the store,
written chunk by chunk), truth (exact top-10 of the held-out queries, the store read in chunks),
build (train, add, tune), search (load, then recall@10 and single-query rate over a grid of
nprobe and re-ranking depths), update (add and remove items in the trained index).

Memory: a process's resident set counts the pages of a memory-mapped file it has touched; the
kernel drops those (they are page cache) when memory is short, so each step reports its peak
resident set (VmHWM) and its peak anonymous memory (its own allocations, sampled every
0.1 s) apart.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hybrid_retrieval.experiments.speed import (
    _rate,
    _unit_vectors,
    mb,
    memory_status_mb,
    rss_mb,
    run_worker,
    unit_vector_chunks,
)
from hybrid_retrieval.report import markdown_table

STEPS = ("data", "truth", "build", "search", "update")
STORE = "store.f16.npy"
_READ_CHUNK = 1 << 18  # rows of the store read at once by the truth step (512 MB of float16 at d = 1024)


def _rss_parts() -> dict:
    """Resident memory now, anonymous (the process's own) and file-backed (mapped pages of the
    store it has touched, which the kernel may drop), and the peak resident set (VmHWM, of this
    program only: ru_maxrss would count what the process had before its exec), in MB (Linux /proc)."""
    return memory_status_mb("RssAnon", "RssFile", "VmHWM")


@contextlib.contextmanager
def _anonymous_peak(result: dict) -> Iterator[None]:
    """Samples RssAnon every 0.1 s meanwhile; its largest value goes to result["peak_anon_mb"]."""
    done, peak = threading.Event(), [0.0]

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _rss_parts().get("RssAnon", 0.0))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        now = _rss_parts()
        result.update(peak_anon_mb=max(peak[0], now.get("RssAnon", 0.0)), peak_resident_mb=now.get("VmHWM"))


def _write_store(path: Path, n: int, dim: int) -> None:
    """n structured unit vectors as a float16 .npy file, written chunk by chunk with plain writes
    (nothing is mapped, so the process holds one chunk; the written pages are page cache)."""
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                   "fortran_order": False, "shape": (n, dim)})
        for chunk in unit_vector_chunks(n, dim, 0, True):
            out.write(chunk.half().numpy().tobytes())


def _mapped_store(folder: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(folder / STORE, mmap_mode="c"))


def _store_chunks(folder: Path, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, float16 rows) of the first `rows` rows of the store, read (not mapped) in chunks."""
    mapped = np.load(folder / STORE, mmap_mode="r")  # only for the header's offset and shape
    offset, dim = mapped.offset, mapped.shape[1]
    del mapped
    with open(folder / STORE, "rb") as source:
        source.seek(offset)
        for first in range(0, rows, _READ_CHUNK):
            count = min(_READ_CHUNK, rows - first)
            yield first, torch.from_numpy(np.fromfile(source, dtype=np.float16, count=count * dim).reshape(count, dim))


def _exact_top10(folder: Path, n: int, queries: torch.Tensor) -> torch.Tensor:
    """The exact top-10 rows of each query over the first n items, the store read in chunks."""
    from hybrid_retrieval.index.backends.exact import exact_search

    scores, rows = [], []
    for first, chunk in _store_chunks(folder, n):
        top = exact_search(chunk, queries, 10)
        scores.append(top[0])
        rows.append(top[1] + first)
    best = torch.cat(scores, dim=1).topk(10, dim=1).indices
    return torch.cat(rows, dim=1).gather(1, best)


def measure_scale(step: str, root: str, n: int, added: int, dim: int, tune: int, held_out: int,
                  device: str) -> dict:
    """One step of the scale benchmark over the files in `root` (see the module docstring)."""
    result: dict = {}
    with _anonymous_peak(result):
        result.update(_scale_step(step, Path(root), n, added, dim, tune, held_out))
    return result


def _scale_step(step: str, folder: Path, n: int, added: int, dim: int, tune: int, held_out: int) -> dict:
    from hybrid_retrieval.index.backends.base import RecallProbe, recall_at_k
    from hybrid_retrieval.index.backends.faiss_backend import FaissBackend

    result: dict = {}
    started = time.perf_counter()
    if step == "data":
        _write_store(folder / STORE, n + added, dim)
        np.save(folder / "queries.npy", _unit_vectors(tune + held_out, dim, 1, True).numpy())
        result["store_gb"] = round((folder / STORE).stat().st_size / 1e9, 2)
        return result
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    if step == "truth":
        np.save(folder / "truth.npy", _exact_top10(folder, n, queries[tune:]).numpy())
        return result
    if step == "build":
        backend = FaissBackend()
        backend.build(_mapped_store(folder)[:n], kind="ivfpq", queries=queries[:tune], progress=False)
        result["build_s"] = round(time.perf_counter() - started, 1)
        probe_started = time.perf_counter()  # the share of the build that was the tuning's exact search
        RecallProbe.make(_mapped_store(folder)[:n], queries[:tune])
        result["tuning_truth_s"] = round(time.perf_counter() - probe_started, 1)
        settings, tensors = backend.save()
        tensors["faiss"].numpy().tofile(folder / "ivfpq.faiss")
        (folder / "settings.json").write_text(json.dumps(settings))
        result.update(settings=settings, index_mb=round((folder / "ivfpq.faiss").stat().st_size / 1e6))
        return result
    settings = json.loads((folder / "settings.json").read_text())
    blob = torch.from_numpy(np.memmap(folder / "ivfpq.faiss", dtype=np.uint8, mode="c"))  # as a mapped index file
    backend = FaissBackend.load(settings, {"faiss": blob, "faiss_rows": torch.arange(n)}, _mapped_store(folder)[:n])
    del blob
    result["load_s"] = round(time.perf_counter() - started, 1)
    result["rss_after_load_mb"] = rss_mb()
    if step == "search":
        truth = torch.from_numpy(np.load(folder / "truth.npy"))
        held = queries[tune:]
        chosen, curve = list(settings["value"]), []
        for nprobe in sorted({16, 32, 64, 128, 256, chosen[0]}):
            for rerank in (2, 5, 10, 20, 50):
                backend.use_setting([nprobe, rerank])
                recall = recall_at_k(backend.search(held, 10)[1], truth)
                singles = iter(range(10 ** 9))
                rate = _rate(lambda: backend.search(held[next(singles) % len(held)][None], 10), 1, "cpu",
                             min_seconds=2.0, max_calls=200)
                # the FAISS part alone: the candidates from the codes, without re-ranking them from the store
                codes = _rate(lambda: backend.index.search(held[next(singles) % len(held)][None].numpy(), 10 * rerank),
                              1, "cpu", min_seconds=1.0, max_calls=200)
                curve.append({"nprobe": nprobe, "rerank": rerank, "recall@10": round(recall, 4), "qps_1": rate,
                              "qps_candidates": codes})
        result.update(curve=curve, chosen=chosen, **_rss_parts())
        return result
    full = _mapped_store(folder)  # n + added rows: the added ones after the catalogue's
    begin = time.perf_counter()
    backend.add(full, n)
    result["add_s"] = round(time.perf_counter() - begin, 2)
    gone = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:added].sort().values
    begin = time.perf_counter()
    backend.remove(gone.tolist(), full)  # rows after the removed ones move up; the matrix is not searched here
    result["remove_s"] = round(time.perf_counter() - begin, 2)
    result["ntotal"] = backend.index.ntotal
    return result


def bench_scale(args: argparse.Namespace) -> str:
    """A catalogue of --scale-items structured vectors (d = --dim) searched through an IVF-PQ index
    with exact re-ranking from a float16 store memory-mapped from disk (written under
    --scale-dir, deleted afterwards): build time, the recall/rate curve, memory, update times."""
    n, added, tune, held_out = args.scale_items, args.scale_added, 200, 500
    need = (n + added) * args.dim * 2
    Path(args.scale_dir).mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(args.scale_dir).free < 1.1 * need:
        raise SystemExit(f"{args.scale_dir} has {shutil.disk_usage(args.scale_dir).free / 1e9:.1f} GB free; "
                         f"the store needs {need / 1e9:.1f} GB")
    root = tempfile.mkdtemp(prefix="hybrid-retrieval-scale-", dir=args.scale_dir)
    common = {"root": root, "n": n, "added": added, "dim": args.dim, "tune": tune, "held_out": held_out,
              "device": "cpu", "threads": args.threads}
    steps = {}
    try:
        for step in STEPS:
            print(f"scale, {step} ({n:,} items)", flush=True)
            began = time.perf_counter()
            steps[step] = run_worker("scale", step=step, **common)
            steps[step]["wall_s"] = round(time.perf_counter() - began, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _tables(steps, n, added, tune, held_out, args.dim)


def _tables(steps: dict, n: int, added: int, tune: int, held_out: int, dim: int) -> str:
    build, search, update = steps["build"], steps["search"], steps["update"]
    settings = build["settings"]
    summary = {
        "catalogue": f"{n:,} x {dim} structured unit vectors; float16 store {steps['data']['store_gb']} GB on disk",
        "writing the store": f"{steps['data']['wall_s']} s",
        "exact top-10 of the held-out queries": f"{steps['truth']['wall_s']} s for {held_out} queries",
        "build (train + add + tune)": f"{build['build_s']} s, of which {build['tuning_truth_s']} s the exact "
                                      f"top-10 of the {tune} tuning queries",
        "index": f"{settings['factory']}: {build['index_mb']:,} MB of codes and lists",
        "tuned to": f"nprobe={settings['value'][0]}, re-rank {settings['value'][1]} x k: recall@10 "
                    f"{settings['recall@10']} on the {tune} tuning queries",
        "search process memory": f"RSS after load {mb(search['rss_after_load_mb'])} MB; at the end of the curve "
                                 f"{mb(search['RssAnon'])} MB anonymous + {mb(search['RssFile'])} MB mapped pages",
        f"update: add {added:,} items": f"{update['add_s']} s (encoded into the trained cells)",
        f"update: remove {added:,} items": f"{update['remove_s']} s",
        "update: re-measure the recall": f"{build['tuning_truth_s']} s (the tuning queries' exact search)",
    }
    memory = {step: {"wall s": f"{steps[step]['wall_s']}", "peak RSS, MB": mb(steps[step]["peak_resident_mb"]),
                     "peak anonymous, MB": mb(steps[step]["peak_anon_mb"])} for step in STEPS}
    chosen = search["chosen"]
    curve = {f"nprobe {point['nprobe']}, re-rank {point['rerank']} x k"
             f"{' (tuned)' if [point['nprobe'], point['rerank']] == chosen else ''}": {
                 "recall@10 (held-out)": f"{point['recall@10']:.3f}",
                 "queries/s, 1 per call": f"{point['qps_1']:,.1f}",
                 "candidates only (FAISS), queries/s": f"{point['qps_candidates']:,.1f}"} for point in search["curve"]}
    return "\n\n".join([
        markdown_table({key: {"value": value} for key, value in summary.items()}, ["value"], f"IVF-PQ at {n:,} items"),
        markdown_table(memory, ["wall s", "peak RSS, MB", "peak anonymous, MB"],
                       "each step's process (RSS counts the mapped store pages it touched)"),
        markdown_table(curve, ["recall@10 (held-out)", "queries/s, 1 per call", "candidates only (FAISS), queries/s"],
                       f"recall vs rate ({held_out} held-out queries)")])
