"""Reading many audio files in worker processes, ahead of the model that embeds them.

`AudioReader(paths, window)` decodes and resamples the files (cut into the windows
`io.audio_windows` cuts them into) in the worker processes of a torch DataLoader (or, with no
workers, in one thread of this process) while the caller runs the tower, and hands each file's
windows out in the order of `paths`, so the tower sees the same pieces in the same order as
when one process reads them (and computes the same outputs, bit for bit). Work goes out in parts
of `io.WINDOWS_PER_READ` windows (the groups `io` decodes in one read, so a part's windows are
those `audio_windows` reads), so memory holds a few parts whatever the files' lengths; a part is
planned from the file's header, read in the main process just before the part is handed to a
worker. A file that cannot be read is handed out as its AudioLoadError, in its turn. Given
`features` (a CPU tower's log-mel front end), a reader thread computes them too, sharing the
work with the caller's thread, which runs the backbone.

Callers that skip files they already have (the feature cache) ask for files in the order of
`paths` but may leave some out: a file not asked for is dropped when a later one is asked for,
and a file asked for that was never queued is read on the spot.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
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

# Parts read ahead: per worker process, and by the reader thread (which also computes features
# while that many wait, so a deeper queue keeps it busy through a run of short files; see
# `_ReadAhead`).
WORKER_PREFETCH, THREAD_READ_AHEAD = 2, 8

Part = tuple[int, range | None, bool]  # (file, window numbers (None: all of a file read whole), last part?)
# What a reader may compute from a part's windows before handing them out: (pieces, samples) ->
# (pieces, ...), each row computed from its own window (a CPU tower's log-mel front end).
Features = Callable[[torch.Tensor], torch.Tensor]


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
    files handed out, and `progress` (a tqdm bar) is advanced by one for each. `prefetch`: parts
    read ahead per worker process, or by the thread (default WORKER_PREFETCH, THREAD_READ_AHEAD).
    With `features` and no worker processes, each window is handed out as its features, computed
    by the reader thread or the caller's, whichever gets to it first (`_ReadAhead`): a CPU tower's
    log-mels, so that the caller runs only the backbone (`embedding.embed_audio_files`). Worker
    processes hand out the windows, whatever `features` (features computed there, then sent
    back as tensors, ran slower here: BENCHMARKS.md)."""

    def __init__(self, paths: Sequence[str | Path], window: int | None, sample_rate: int = SAMPLE_RATE,
                 workers: int = DEFAULT_WORKERS, prefetch: int | None = None, progress: tqdm | None = None,
                 features: Features | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.window, self.sample_rate = window, sample_rate
        self.features = features if not workers else None  # what the pieces handed out are
        self._queue_position = {path: i for i, path in reversed(list(enumerate(self.paths)))}
        self._head = 0  # the next file the loader hands out
        self._loader: Iterator[tuple] | None = None
        self._workers = workers
        self._prefetch = prefetch if prefetch is not None else (WORKER_PREFETCH if workers else THREAD_READ_AHEAD)
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
            self._loader = iter(loader) if workers else _ReadAhead(iter(loader), self._prefetch, self.features)
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
                        piece = torch.as_tensor(piece)
                        yield local, piece if self.features is None else self.features(piece[None])[0]
                except AudioLoadError as exc:
                    failures[local] = exc
            self.files_read += 1
            if self.progress is not None:
                self.progress.update(1)

    @contextlib.contextmanager
    def backbone_threads(self) -> Iterator[int]:
        """The torch threads a backbone should run on beside this reader, for the duration of the
        block. A reader thread computing features takes one of torch's threads (the count is
        lowered to one meanwhile, for the front ends the caller computes itself, and restored
        after); otherwise, torch's count."""
        threads = torch.get_num_threads()
        if self.features is None:
            yield threads
            return
        torch.set_num_threads(1)
        try:
            yield max(1, threads - 1)
        finally:
            torch.set_num_threads(threads)

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
    copies. Parts come out in the loader's order; an error raised reading is raised here.

    With `features`, the two threads share the front end: while `depth` parts wait, the thread
    computes the features of the oldest waiting part nobody has started, and the caller computes
    those of a part it takes that nobody has. On a CPU whose cores the backbone and the reading
    share this keeps both threads busy whichever of reading, front end and backbone is the
    slower, where a fixed split of the work leaves one of them waiting (BENCHMARKS.md)."""

    _END = object()
    _RAW, _BUSY, _DONE = "raw", "busy", "done"  # the states of a waiting part's features

    def __init__(self, parts: Iterator[tuple], depth: int, features: Features | None = None) -> None:
        self._features = features
        self._depth = max(1, depth)
        self._waiting: collections.deque[list] = collections.deque()  # [part or _END or exception, state]
        self._changed = threading.Condition()
        self._stop = self._ended = False
        self._thread = threading.Thread(target=self._run, args=(parts,), name="hybrid-retrieval-reader", daemon=True)
        self._thread.start()

    def _run(self, parts: Iterator[tuple]) -> None:
        if self._features is not None:
            # The front end on one thread here, beside the caller's thread, which runs the
            # backbone. torch keeps a count per thread once the thread has run a parallel op, so
            # the caller's own count (set back when its block ends) does not change this one.
            torch.set_num_threads(1)
        exhausted = False
        while True:
            with self._changed:
                while True:
                    if self._stop:
                        return
                    if not exhausted and len(self._waiting) < self._depth:
                        entry = None  # read the next part
                        break
                    entry = next((e for e in self._waiting if e[1] == self._RAW), None)
                    if entry is not None:
                        entry[1] = self._BUSY
                        break
                    if exhausted:
                        return
                    self._changed.wait()
            if entry is not None:
                self._compute(entry)
                continue
            try:
                part = next(parts)
            except StopIteration:
                part = self._END
            except BaseException as exc:  # handed to the caller, who raises it
                part = exc
            exhausted = part is self._END or isinstance(part, BaseException)
            state = self._RAW if self._features is not None and not exhausted and len(part) == 4 else self._DONE
            with self._changed:
                self._waiting.append([part, state])
                self._changed.notify_all()

    def _compute(self, entry: list) -> None:
        """The features of a waiting part (state _BUSY, claimed by the calling thread)."""
        index, pieces, finite, last = entry[0]
        try:
            entry[0] = (index, self._features(torch.as_tensor(pieces)), finite, last)
        except BaseException as exc:  # handed to the caller, who raises it
            entry[0] = exc
        with self._changed:
            entry[1] = self._DONE
            self._changed.notify_all()

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> tuple:
        if self._ended:
            raise StopIteration
        with self._changed:
            self._changed.wait_for(lambda: self._waiting)
            entry = self._waiting.popleft()
            self._changed.notify_all()  # room for the next part
            mine = entry[1] == self._RAW
            if mine:
                entry[1] = self._BUSY
        if mine:
            self._compute(entry)
        with self._changed:
            self._changed.wait_for(lambda: entry[1] == self._DONE)
        part = entry[0]
        if part is self._END:
            self._ended = True
            raise StopIteration
        if isinstance(part, BaseException):
            self._ended = True
            raise part
        return part

    def close(self) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join()
