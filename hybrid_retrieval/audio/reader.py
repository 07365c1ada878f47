"""Reading many audio files in worker processes, ahead of the model that embeds them.

`AudioReader(paths, window)` decodes and resamples the files (cut into the windows
`io.audio_windows` cuts them into) in the worker processes of a torch DataLoader (or, with no
workers, in one thread of this process) while the caller runs the tower, and hands each file's
windows out in the order of `paths`, so the tower sees the same pieces in the same order as
when one process reads them (and computes the same outputs, bit for bit). Work goes out in parts
of `io.WINDOWS_PER_READ` windows (the groups `io` decodes in one read, so a part's windows are
those `audio_windows` reads), so memory holds a few parts whatever the files' lengths; a part is
planned from the file's header, read in the main process just before the part is handed to a
worker. A file that cannot be read is handed out as its AudioLoadError, in its turn.

Callers that skip files they already have (the feature cache) ask for files in the order of
`paths` but may leave some out: a file not asked for is dropped when a later one is asked for,
and a file asked for that was never queued is read on the spot.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hybrid_retrieval.audio import io as audio_io
from hybrid_retrieval.audio.io import (
    SAMPLE_RATE,
    AudioLoadError,
    audio_info,
    audio_windows,
    no_finite_samples,
    read_windows,
    window_starts,
)

# Reader processes: the cores less two, at most 8 (a GPU tower needs several to be kept busy; on a
# CPU the tower's threads and the readers share the cores: on 2 cores, reading in a thread of the
# main process was the fastest, see BENCHMARKS.md).
DEFAULT_WORKERS = max(0, min(8, (os.cpu_count() or 2) - 2))

Part = tuple[int, range | None, bool]  # (file, window numbers (None: all of a file read whole), last part?)


def _quiet_worker(_: int) -> None:
    """Warnings about a file (truncated, cannot seek) are said by the main process, which reads
    every header first; a worker that read the file again would repeat them."""
    logging.getLogger("hybrid_retrieval").setLevel(logging.ERROR)


class _Parts(Dataset):
    """A part of a file -> (file, pieces as a (pieces, samples) array, any finite sample?, last
    part?) or (file, AudioLoadError). Parts are planned as the loader asks for them (the
    loader's sampler is `AudioReader._plan`), so the dataset has no length."""

    def __init__(self, paths: Sequence[str], window: int | None, sample_rate: int) -> None:
        self.paths, self.window, self.sample_rate = paths, window, sample_rate

    def __getitem__(self, part: Part) -> tuple:
        index, numbers, last = part
        try:
            pieces, finite = read_windows(self.paths[index], self.window, numbers, self.sample_rate)
        except AudioLoadError as exc:
            return index, exc
        return index, np.stack(pieces), finite, last  # the pieces of a part have one length


class AudioReader:
    """Windows of `paths` read by `workers` processes (0: by a thread of this process) ahead of the caller;
    `pieces(paths, failures)` hands them out (see the module docstring). `files_read` counts the
    files handed out, and `progress` (a tqdm bar) is advanced by one for each."""

    def __init__(self, paths: Sequence[str | Path], window: int | None, sample_rate: int = SAMPLE_RATE,
                 workers: int = DEFAULT_WORKERS, prefetch: int = 2, progress: tqdm | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.window, self.sample_rate = window, sample_rate
        self._queue_position = {path: i for i, path in reversed(list(enumerate(self.paths)))}
        self._head = 0  # the next file the loader hands out
        self._loader: Iterator[tuple] | None = None
        self._workers, self._prefetch = workers, prefetch
        self.progress, self.files_read = progress, 0

    def _plan(self) -> Iterator[Part]:
        """The parts of each file in turn, from its header (read here, in the main process, as the
        loader asks for more work: it says once what is wrong with a damaged file)."""
        for index, path in enumerate(self.paths):
            try:
                info = audio_info(path)
            except AudioLoadError:
                yield index, None, True  # the worker meets the same error and hands it out in turn
                continue
            if not info.seekable:
                yield index, None, True
                continue
            count = len(window_starts(info.length(self.sample_rate), self.window))
            per_part = audio_io.WINDOWS_PER_READ  # read here, so that a test can change it
            for start in range(0, count, per_part):
                stop = min(count, start + per_part)
                yield index, range(start, stop), stop == count

    def _next_part(self) -> tuple:
        if self._loader is None:
            workers = self._workers
            loader = DataLoader(_Parts(self.paths, self.window, self.sample_rate), batch_size=None,
                                sampler=self._plan(), num_workers=workers,
                                prefetch_factor=self._prefetch if workers else None,
                                worker_init_fn=_quiet_worker if workers else None,
                                # its own generator: iterating a loader draws a seed, which must not
                                # move the global RNG that training's crops and dropout continue from
                                generator=torch.Generator())
            self._loader = iter(loader) if workers else _ReadAhead(iter(loader), self._prefetch)
        return next(self._loader)

    def _take(self, index: int, failures: dict[int, AudioLoadError], local: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Hand out queued file `index` (as `local`), dropping the queued files before it."""
        finite = False
        while True:
            part = self._next_part()
            if part[0] < index:  # a file not asked for: dropped
                continue
            if len(part) == 2:
                failures[local] = part[1]
                break
            _, pieces, has_finite, last = part
            finite = finite or has_finite
            for piece in pieces:
                yield local, torch.as_tensor(piece)
            if last:
                if not finite:
                    failures[local] = no_finite_samples(self.paths[index])
                break
        self._head = index + 1

    def pieces(self, paths: Sequence[str | Path], failures: dict[int, AudioLoadError]) -> Iterator[tuple[int, torch.Tensor]]:
        """(position in `paths`, window) of each file of `paths` in turn; the AudioLoadError of a
        file that cannot be used goes into `failures` under its position (its pieces, if any came
        before the error, are handed out all the same: callers drop the file's outputs)."""
        for local, path in enumerate(paths):
            index = self._queue_position.get(str(path), -1)
            if index >= self._head:
                yield from self._take(index, failures, local)
            else:
                try:  # not queued (or already handed out): read here
                    for piece in audio_windows(path, self.window, self.sample_rate):
                        yield local, torch.as_tensor(piece)
                except AudioLoadError as exc:
                    failures[local] = exc
            self.files_read += 1
            if self.progress is not None:
                self.progress.update(1)

    def close(self) -> None:
        """Stop the worker processes or thread (also when the reader is dropped)."""
        if isinstance(self._loader, _ReadAhead):
            self._loader.close()
        self._loader = None

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReadAhead:
    """The parts of a loader without worker processes, read by one thread of this process at
    most `depth` parts ahead: decoding (libsndfile) and resampling (soxr) release the GIL, so
    files are read while the caller's thread runs the tower, without a process's start-up or
    copies. Parts come out in the loader's order; an error raised reading is raised here."""

    _END = object()

    def __init__(self, parts: Iterator[tuple], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(parts,), name="hybrid-retrieval-reader", daemon=True)
        self._thread.start()

    def _read(self, parts: Iterator[tuple]) -> None:
        try:
            for part in parts:
                if not self._put(part):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the caller, who raises it
            self._put(exc)

    def _put(self, entry: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> tuple:
        if self._ended:
            raise StopIteration
        entry = self._queue.get()
        if entry is self._END:
            self._ended = True
            raise StopIteration
        if isinstance(entry, BaseException):
            self._ended = True
            raise entry
        return entry

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
