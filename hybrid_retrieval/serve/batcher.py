"""Dynamic batching of concurrent requests: what arrives while a batch runs goes in the next one.

One worker takes the first waiting request, then every other request already waiting (up to
`max_batch`), and runs them together in its own thread, so the event loop keeps accepting
requests meanwhile; `max_batch=1` runs them one at a time. Whether batching pays off is measured
by `scripts/load_test.py` (BENCHMARKS.md); the service's default follows that measurement.
Hand-written because it is a loop of a dozen lines over asyncio's queue and futures.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueryBatcher(Generic[T, R]):
    """`await submit(x)` gives `run([..., x, ...])`'s answer for x; `run` maps a batch to one answer each."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], max_batch: int) -> None:
        self.run, self.max_batch = run, max_batch
        self.batches = self.queries = self.largest = 0  # batches run, queries answered, largest batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="query-batcher")

    def start(self) -> None:
        """Start the worker on the running event loop (the app's start-up)."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def submit(self, item: T) -> R:
        if self._worker is None:
            raise RuntimeError("QueryBatcher.start() was not called on this event loop")
        answer = asyncio.get_running_loop().create_future()
        await self._queue.put((item, answer))
        return await answer

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(item, answer) for item, answer in batch if not answer.cancelled()]  # clients gone
            if not batch:
                continue
            self.batches, self.queries = self.batches + 1, self.queries + len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                results = await loop.run_in_executor(self._thread, self.run, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every request of the batch, which reports it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (_, answer), result in zip(batch, results):
                if not answer.done():
                    answer.set_result(result)
