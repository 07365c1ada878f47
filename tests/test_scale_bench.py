"""The scale benchmark's data and ground-truth steps (`experiments.scale_bench`), small: the store
written chunk by chunk holds `_unit_vectors` in float16, and the exact top-10 computed from
chunks read off the file equals exact search over the whole matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hybrid_retrieval.experiments import scale_bench
from hybrid_retrieval.experiments.speed import _unit_vectors
from hybrid_retrieval.index.backends.exact import exact_search


def test_store_and_truth_steps(tmp_path: Path, monkeypatch) -> None:
    n, added, dim, tune, held_out = 70_000, 50, 16, 5, 7  # more rows than one generated chunk (65,536)
    monkeypatch.setattr(scale_bench, "_READ_CHUNK", 20_000)  # the truth crosses read chunks
    common = {"root": str(tmp_path), "n": n, "added": added, "dim": dim, "tune": tune, "held_out": held_out,
              "device": "cpu"}
    data = scale_bench.measure_scale("data", **common)
    store = np.load(tmp_path / scale_bench.STORE)
    expected = _unit_vectors(n + added, dim, 0, True).half()
    assert store.dtype == np.float16 and torch.equal(torch.from_numpy(store), expected)
    assert data["peak_anon_mb"] > 0 and data["peak_resident_mb"] >= data["peak_anon_mb"]

    scale_bench.measure_scale("truth", **common)
    queries = torch.from_numpy(np.load(tmp_path / "queries.npy"))
    truth = torch.from_numpy(np.load(tmp_path / "truth.npy"))
    assert torch.equal(truth, exact_search(expected[:n], queries[tune:], 10)[1])
