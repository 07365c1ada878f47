"""A bounded resident set for reads through a memory-mapped store.

A process's resident set counts every page of a mapped file it has touched, for as long as the
kernel leaves the pages mapped. Reading a large index's store through its mapping (re-ranking
candidates, adding the catalogue to an approximate index, an exact scan) would leave most of the
store counted against the process, although those pages are page cache. `PageBudget` watches
the process's mapped resident pages and, once they have grown past a budget, tells the kernel
that the process no longer needs the store's pages (madvise MADV_DONTNEED): they leave its
resident set and stay in the page cache, so reading them again is a minor fault, not a disk
read. The price is those faults: re-ranking from a released store maps its rows again
(BENCHMARKS.md, "Search at scale").

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

RESIDENT_BUDGET = 512 << 20  # growth of this process's mapped resident pages between two releases
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
