"""The load test of `hybrid-retrieval serve` (scripts/load_test.py): latency and throughput of text
queries at 1, 8 and 32 concurrent clients on a 10,000-item index, with and without batching of
the text tower, and the server's memory over a 2-minute run.

The index holds generated embeddings (random unit vectors, seeded) recorded with the real model's
identity (`assemble_index`), so that it can be made in seconds; the queries go through the real
text tower of that model. The server is the command line's own (`hybrid-retrieval serve`, a
process of its own), on 127.0.0.1 and a free port; the clients are httpx's async client in this
process, each sending its next query when the last is answered, for a bounded time and count.
Its resident memory is read from /proc/<pid>/status (Linux) while it runs. Nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from hybrid_retrieval.errors import BadInputError
from hybrid_retrieval.terminal import at_least_one, positive_number

SUBJECTS = ("a dog", "rain", "a crowd", "a car engine", "church bells", "a piano", "birds", "a train",
            "footsteps", "wind", "a baby", "thunder", "a drill", "a violin", "waves", "a door")
ACTIONS = ("in the distance", "close to the microphone", "in a large hall", "outdoors at night",
           "with traffic behind it", "while people talk", "on a tin roof", "in a small room")


def queries(count: int = len(SUBJECTS) * len(ACTIONS)) -> list[str]:
    """`count` distinct text queries (subject x setting), in a fixed order."""
    every = [f"{subject} {action}" for action in ACTIONS for subject in SUBJECTS]
    return every[:count]


def generated_index(checkpoint: str, size: int, out: Path, seed: int = 0) -> Path:
    """An index of `size` random unit embeddings recorded as built by `checkpoint`'s model."""
    from hybrid_retrieval.data.items import CatalogueItem
    from hybrid_retrieval.index.search_index import assemble_index
    from hybrid_retrieval.index.store import save_index
    from hybrid_retrieval.models import load_retrieval_model

    model, info = load_retrieval_model(checkpoint)
    embeddings = torch.nn.functional.normalize(
        torch.randn(size, model.config.embed_dim, generator=torch.Generator().manual_seed(seed)), dim=-1)
    items = [CatalogueItem(f"generated/{i:05d}.wav", Path(f"/generated/{i:05d}.wav")) for i in range(size)]
    index = assemble_index(model, items, [str(item.audio_path) for item in items], None, embeddings, info,
                           source=f"generated:{size}", progress=False)
    return save_index(index, out)


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` (Linux: VmRSS of /proc/<pid>/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BadInputError(f"no VmRSS in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(index: Path, max_batch: int, log: Path):
    """(url, pid) of `hybrid-retrieval serve index` on 127.0.0.1, stopped on leaving."""
    port = _free_port()
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "hybrid_retrieval.cli", "serve", str(index), "--host",
                                    "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch)],
                                   stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 600
            while True:
                if process.poll() is not None:
                    raise BadInputError(f"the server exited with status {process.returncode}; see {log}")
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BadInputError(f"the server did not answer in 600 s; see {log}") from None
                    time.sleep(0.5)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(timeout=60)


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def load(url: str, clients: int, seconds: float, max_requests: int, texts: list[str], top: int = 10,
               rss_of: int | None = None, rss_every: float = 2.0) -> dict:
    """`clients` concurrent clients asking text queries for `seconds` (at most `max_requests` in
    all): latency percentiles (ms), queries/s, errors (a status other than 200 or fewer than
    `top` results), and with `rss_of` the server's memory sampled every `rss_every` seconds."""
    import httpx

    latencies: list[float] = []
    errors = 0
    samples: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds

    async def client(number: int) -> None:
        nonlocal errors
        position = number
        while loop.time() < deadline and len(latencies) + errors < max_requests:
            text = texts[position % len(texts)]
            position += clients
            began = time.perf_counter()
            try:
                response = await http.get("/search", params={"q": text, "top": top})
                ok = response.status_code == 200 and len(response.json()["results"]) == top
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    async def sample() -> None:
        while loop.time() < deadline:
            samples.append((round(loop.time() - start, 1), round(rss_mib(rss_of), 1)))
            await asyncio.sleep(rss_every)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        tasks = [client(i) for i in range(clients)] + ([sample()] if rss_of else [])
        await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    ms = [1000 * x for x in latencies] or [float("nan")]
    result = {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 1),
              "qps": round(len(latencies) / elapsed, 1), "p50_ms": round(_percentile(ms, 50), 1),
              "p95_ms": round(_percentile(ms, 95), 1), "p99_ms": round(_percentile(ms, 99), 1)}
    if rss_of:
        result["rss_mib"] = samples
    return result


def run_load_test(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="audioset_tags", help="whose model the index and queries use")
    parser.add_argument("--items", type=at_least_one, default=10_000, help="index size (default 10000)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per measurement (default 1,8,32)")
    parser.add_argument("--batches", default="1,32", help="server --max-batch values compared (default 1,32)")
    parser.add_argument("--seconds", type=positive_number, default=20.0, help="length of each measurement")
    parser.add_argument("--max-requests", type=at_least_one, default=20_000, help="cap of each measurement")
    parser.add_argument("--memory-seconds", type=positive_number, default=120.0,
                        help="length of the memory run (the largest client count, the last --batches value)")
    parser.add_argument("--out", default="results/load_test", help="folder of the results (JSON, Markdown, logs)")
    args = parser.parse_args(argv)
    clients = [at_least_one(x) for x in args.clients.split(",")]
    batches = [at_least_one(x) for x in args.batches.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = queries()
    report = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "items": args.items,
              "checkpoint": args.checkpoint, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    index = generated_index(args.checkpoint, args.items, out / "generated.index")
    for max_batch in batches:
        with running_server(index, max_batch, out / f"server-batch{max_batch}.log") as (url, pid):
            asyncio.run(load(url, 4, 5, 200, texts))  # warm-up: first queries, thread pools
            for count in clients:
                row = asyncio.run(load(url, count, args.seconds, args.max_requests, texts))
                row["max_batch"] = max_batch
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    with running_server(index, batches[-1], out / "server-memory.log") as (url, pid):
        asyncio.run(load(url, 4, 5, 200, texts))
        memory = asyncio.run(load(url, max(clients), args.memory_seconds, 10 ** 9, texts, rss_of=pid))
        memory["max_batch"] = batches[-1]
    report["memory"] = memory
    report["machine"]["load_after"] = os.getloadavg()
    (out / "load_test.json").write_text(json.dumps(report, indent=1))
    table = load_table(report)
    (out / "load_test.md").write_text(table)
    print(table)
    return 0


def load_table(report: dict) -> str:
    """The Markdown of a load test's report."""
    lines = ["| --max-batch | clients | queries | errors | queries/s | p50 ms | p95 ms | p99 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['max_batch']} | {row['clients']} | {row['requests']} | {row['errors']} | {row['qps']} | "
                     f"{row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} |")
    memory = report["memory"]
    rss = [mib for _, mib in memory["rss_mib"]]
    lines += ["", f"Memory run: {memory['clients']} clients for {memory['seconds']} s, --max-batch {memory['max_batch']}: "
                  f"{memory['requests']} queries, {memory['errors']} errors, {memory['qps']} queries/s, p99 "
                  f"{memory['p99_ms']} ms; server RSS {rss[0]} MiB at the start, {rss[len(rss) // 2]} MiB half-way, "
                  f"{rss[-1]} MiB at the end ({min(rss)}-{max(rss)} MiB over {len(rss)} samples).",
              f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in report['machine']['load_before'])}; "
              f"after: {', '.join(f'{x:.2f}' for x in report['machine']['load_after'])} "
              f"({report['machine']['cpus']} CPUs)."]
    return "\n".join(lines) + "\n"
