"""A bounded resident set for reads through a memory-mapped store.

A process's resident set counts every page of a mapped file it has touched, for as long as the
kernel leaves the pages mapped. Reading a large index's store through its mapping (re-ranking
candidates, adding the catalogue to an approximate index, an exact scan) would leave most of the
store counted against the process, although those pages are page cache. `PageBudget` counts the
bytes read through a tensor's mapping and, once they pass a budget, tells the kernel that the
process no longer needs the pages (madvise MADV_DONTNEED): they leave its resident set and stay
in the page cache, so reading them again is a minor fault, not a disk read.

Only a range inside one file-backed mapping that this process has not written to (no
copy-on-write pages: smaps' `Anonymous` is 0) is released; on anonymous memory, or on written
pages, MADV_DONTNEED would discard data. Python's `mmap.madvise` needs the mmap object, which a
torch tensor over a numpy memmap no longer exposes; hence ctypes.
"""
from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

from torch import Tensor

RESIDENT_BUDGET = 512 << 20  # bytes read through a mapping between two releases
# What reading one row may map: a read fault maps the neighbouring pages that are in the page
# cache too, up to the kernel's fault_around_bytes (64 KiB by default).
FAULT_AROUND = 64 << 10
_MADV_DONTNEED = 4


def _mapping_of(start: int, end: int) -> tuple[int, int] | None:
    """The (start, end) of the file-backed mapping of this process holding [start, end), when it
    holds no page this process wrote to; None otherwise."""
    found = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line: range perms offset dev inode [path]
            low, high = (int(part, 16) for part in fields[0].split("-"))
            found = (low, high) if low <= start and end <= high and fields[4] != "0" else None
        elif found is not None and fields[0] == "Anonymous:":
            return found if fields[1] == "0" else None
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
    first = max(mapping[0], start - start % mmap.PAGESIZE)
    last = min(mapping[1], start + storage.nbytes())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(first, last - first, _MADV_DONTNEED) == 0


class PageBudget:
    """Counts the bytes read through `tensor`'s storage; past `budget` (default RESIDENT_BUDGET), releases its pages
    (`release_pages`). A tensor that is not in a file mapping is looked up once, then ignored."""

    def __init__(self, tensor: Tensor, budget: int | None = None) -> None:
        self.tensor, self.budget = tensor, RESIDENT_BUDGET if budget is None else budget
        self.read = 0
        self.mapped = True

    def note(self, nbytes: int) -> None:
        """`nbytes` more were read."""
        if not self.mapped:
            return
        self.read += nbytes
        if self.read >= self.budget:
            self.read = 0
            self.mapped = release_pages(self.tensor)
