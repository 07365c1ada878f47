"""Result tables as Markdown, the format the README and BENCHMARKS.md use."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hybrid_retrieval.metrics import retrieval_metrics

METRIC_COLUMNS = ("mAP@10", "R@1", "R@5", "R@10")


def markdown_table(rows: Mapping[str, Mapping[str, float | str]], columns: Sequence[str] = METRIC_COLUMNS,
                   first: str = "system") -> str:
    """One row per entry; float cells are printed with 4 decimals, strings as they are."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        cells = [values.get(c, "") for c in columns]
        lines.append(f"| {name} | " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines)


def random_baseline(n_items: int, relevant: Sequence[int], seed: int = 0) -> dict[str, float]:
    """Metrics of uniformly random scores (what chance gives on this split)."""
    generator = torch.Generator().manual_seed(seed)
    return retrieval_metrics(torch.rand(len(relevant), n_items, generator=generator), relevant)
