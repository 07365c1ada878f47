"""A bounded resident set for reads through a memory-mapped store.

A process's resident set counts every page of a mapped file it has touched, for as long as the
kernel leaves the pages mapped. Reading a large index's store through its mapping (adding the
catalogue to an approximate index, an exact scan, re-ranking candidates) would leave most of the
store counted against the process, although those pages are page cache. Two remedies:

* `PageBudget`, for scans: it watches the process's mapped resident pages and, once they have
  grown past a budget, tells the kernel that the process no longer needs the store's pages
  (madvise MADV_DONTNEED): they leave its resident set and stay in the page cache, so reading
  them again is a minor fault, not a disk read.
* `FileRows`, for a few scattered rows at a time (re-ranking): positioned reads from the mapped
  file, which map nothing. Through a released mapping each such row would fault again, and a
  fault maps its whole page-cache folio (BENCHMARKS.md, "Search at scale").

Only a range inside one file-backed mapping that this process has not written to (no
copy-on-write pages: smaps' `Anonymous` is 0) is released; on anonymous memory, or on written
pages, MADV_DONTNEED would discard data. Python's `mmap.madvise` needs the mmap object, which a
torch tensor over a numpy memmap no longer exposes; hence ctypes.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

RESIDENT_BUDGET = 512 << 20  # growth of this process's mapped resident pages between two releases
_MADV_DONTNEED = 4


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    offset: int  # of `start` in the file
    inode: int
    path: str


def _mapping_of(start: int, end: int) -> _Mapping | None:
    """The file-backed mapping of this process holding [start, end), when it holds no page this
    process wrote to; None otherwise."""
    found = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line: range perms offset dev inode [path]
            low, high = (int(part, 16) for part in fields[0].split("-"))
            inside = low <= start and end <= high and fields[4] != "0"
            found = _Mapping(low, high, int(fields[2], 16), int(fields[4]), fields[5] if len(fields) > 5 else "") \
                if inside else None
        elif found is not None and fields[0] == "Anonymous:":
            return found if fields[1].split()[0] == "0" else None
    return None


def release_pages(tensor: Tensor) -> bool:
    """Drop the pages of `tensor`'s storage from this process's resident set, when the storage
    lies in a file-backed mapping this process has not written to; whether it did."""
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    start = storage.data_ptr()
    mapping = _mapping_of(start, start + storage.nbytes())
    if mapping is None:
        return False
    first = max(mapping.start, start - start % mmap.PAGESIZE)
    last = min(mapping.end, start + storage.nbytes())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(first, last - first, _MADV_DONTNEED) == 0


def mapped_resident_bytes() -> int | None:
    """This process's resident pages of mapped files and shared memory (/proc/self/statm's third
    field), in bytes; None where there is no /proc. Cheap enough to read after every query."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[2]) * mmap.PAGESIZE
    except OSError:
        return None


class PageBudget:
    """Watches this process's mapped resident pages while `tensor`'s storage is read; once they
    have grown by more than `budget` (default RESIDENT_BUDGET) since the last release, releases
    the tensor's pages (`release_pages`). The growth is measured, not estimated from the bytes
    read: a read fault maps the neighbouring pages in the page cache too, up to a whole large
    folio. A tensor that is not in a clean file mapping is found out at the first release, then
    left alone."""

    def __init__(self, tensor: Tensor, budget: int | None = None) -> None:
        self.tensor, self.budget = tensor, RESIDENT_BUDGET if budget is None else budget
        self.baseline: int | None = None
        self.mapped = True

    def check(self) -> None:
        """Call after reading through the tensor."""
        if not self.mapped:
            return
        now = mapped_resident_bytes()
        if now is None:
            self.mapped = False
        elif self.baseline is None or now < self.baseline:
            self.baseline = now
        elif now - self.baseline > self.budget:
            self.mapped = release_pages(self.tensor)
            self.baseline = mapped_resident_bytes()


class FileRows:
    """Rows of a 2-D tensor mapped from a file, read with positioned reads (pread) instead of
    through the mapping: nothing is mapped, so the process's resident set does not grow, and
    scattered rows cost a system call each instead of a fault that maps a whole folio (what
    re-ranking a few candidates per query does; measured in BENCHMARKS.md). `open` gives one only
    for a row-major tensor in a clean file mapping (see the module docstring) whose file is still
    the one mapped (same inode: a replaced index file is not read)."""

    def __init__(self, descriptor: int, first: int, row_bytes: int, dtype: np.dtype, shape: tuple[int, int]) -> None:
        self._descriptor, self._first, self._row_bytes = descriptor, first, row_bytes
        self.dtype, self.shape = dtype, shape
        self._closer = weakref.finalize(self, os.close, descriptor)

    @classmethod
    def open(cls, tensor: Tensor) -> FileRows | None:
        if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.dim() != 2 \
                or tensor.stride() != (tensor.shape[1], 1) or tensor.numel() == 0:
            return None
        try:
            dtype = torch.empty(0, dtype=tensor.dtype).numpy().dtype
        except TypeError:  # a dtype numpy lacks (bfloat16)
            return None
        start = tensor.data_ptr()
        mapping = _mapping_of(start, start + tensor.nbytes)
        if mapping is None or not mapping.path.startswith("/"):
            return None
        try:
            descriptor = os.open(mapping.path, os.O_RDONLY)
        except OSError:
            return None
        if os.fstat(descriptor).st_ino != mapping.inode:
            os.close(descriptor)
            return None
        return cls(descriptor, mapping.offset + start - mapping.start, tensor.stride(0) * tensor.element_size(), dtype,
                   (tensor.shape[0], tensor.shape[1]))

    def read(self, rows: Sequence[int]) -> Tensor:
        """The rows, in the order given, as a new tensor."""
        buffer = bytearray(len(rows) * self._row_bytes)
        view = memoryview(buffer)
        for i, row in enumerate(rows):
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"row {row} of a {self.shape[0]}-row store")
            part = view[i * self._row_bytes:(i + 1) * self._row_bytes]
            if os.preadv(self._descriptor, [part], self._first + row * self._row_bytes) != len(part):
                raise OSError(f"the index file ended before row {row}")
        return torch.from_numpy(np.frombuffer(buffer, dtype=self.dtype).reshape(len(rows), self.shape[1]))
