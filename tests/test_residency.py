"""Pages read through a memory-mapped store leave the resident set past a budget (index/residency.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_retrieval.index import residency
from hybrid_retrieval.index.backends.exact import exact_search
from hybrid_retrieval.index.residency import FileRows, PageBudget, release_pages

MB = 1 << 20


def _rss_file() -> int:
    """Bytes of mapped files resident in this process (/proc/self/status RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.fixture()
def store(tmp_path: Path) -> tuple[torch.Tensor, np.ndarray]:
    values = np.random.default_rng(0).standard_normal((16_384, 1024)).astype(np.float16)  # 32 MB
    values.tofile(tmp_path / "store.f16")
    mapped = np.memmap(tmp_path / "store.f16", dtype=np.float16, mode="c", shape=values.shape)
    return torch.from_numpy(mapped), values


def test_reading_a_mapped_store_counts_and_releasing_drops_it(store) -> None:
    tensor, values = store
    before = _rss_file()
    total = float(tensor.float().sum())  # touches every page
    assert _rss_file() - before > 24 * MB
    assert release_pages(tensor)
    assert _rss_file() - before < 4 * MB
    assert float(tensor.float().sum()) == total  # the pages come back from the file, unchanged
    np.testing.assert_array_equal(tensor[-3:].numpy(), values[-3:])


def test_memory_that_is_not_a_clean_file_mapping_is_never_released(store) -> None:
    anonymous = torch.randn(1024, 1024)
    copy = anonymous.clone()
    assert not release_pages(anonymous)
    assert torch.equal(anonymous, copy)
    tensor, _ = store
    tensor[5, 0] = 7.0  # a copy-on-write page: releasing would lose the write
    assert not release_pages(tensor)
    assert float(tensor[5, 0]) == 7.0


def test_a_budget_bounds_what_a_scan_leaves_resident(store, monkeypatch) -> None:
    tensor, values = store
    queries = torch.from_numpy(values[[3, 900]]).float()
    monkeypatch.setattr("hybrid_retrieval.index.backends.exact._EXACT_CHUNK", 1024)  # 2 MB chunks
    monkeypatch.setattr(residency, "RESIDENT_BUDGET", 4 * MB)
    before = _rss_file()
    peak = 0
    budget = PageBudget(tensor)
    for start in range(0, len(tensor), 1024):
        tensor[start:start + 1024].float().sum()
        budget.check()
        peak = max(peak, _rss_file() - before)
    # the budget plus what one chunk's faults map (the kernel maps whole large folios), against
    # the 32 MB read
    assert peak < 16 * MB
    rows = exact_search(tensor, queries, 3)[1]
    assert rows[:, 0].tolist() == [3, 900]
    assert _rss_file() - before < 16 * MB


def test_a_budget_measures_what_is_mapped(store, monkeypatch) -> None:
    """Random rows, as re-ranking reads them: each read maps more than its row (neighbouring pages,
    large folios), which the budget sees because it measures the mapped pages."""
    tensor, _ = store
    monkeypatch.setattr(residency, "RESIDENT_BUDGET", 4 * MB)
    before = _rss_file()
    budget = PageBudget(tensor)
    peak = 0
    for row in torch.randperm(len(tensor), generator=torch.Generator().manual_seed(0))[:2000].tolist():
        tensor[row].float().sum()
        budget.check()
        peak = max(peak, _rss_file() - before)
    assert peak < 12 * MB


def test_file_rows_read_what_the_mapping_holds_without_mapping_it(store, tmp_path: Path) -> None:
    tensor, values = store
    view = tensor[100:]  # a slice starts inside the mapping
    rows = FileRows.open(view)
    assert rows is not None
    before = _rss_file()
    wanted = [0, 5, 5, 16_000, 7]
    np.testing.assert_array_equal(rows.read(wanted).numpy(), values[[100 + r for r in wanted]])
    assert rows.read([]).shape == (0, 1024)
    with pytest.raises(IndexError):
        rows.read([len(view)])
    assert _rss_file() - before < 1 * MB


def test_file_rows_refuse_what_they_cannot_read_faithfully(store, tmp_path: Path) -> None:
    tensor, _ = store
    assert FileRows.open(torch.randn(10, 4)) is None  # not a file
    assert FileRows.open(tensor[:, :512]) is None  # rows not contiguous in the file
    written = tensor.clone()
    assert FileRows.open(written) is None
    np.zeros((16_384, 1024), np.float16).tofile(tmp_path / "other.f16")
    (tmp_path / "other.f16").replace(tmp_path / "store.f16")  # the file mapped was replaced
    assert FileRows.open(tensor) is None
    tensor[0, 0] = 1.0  # a copy-on-write page: the file no longer holds what the tensor does
    assert FileRows.open(tensor) is None
