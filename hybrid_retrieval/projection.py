"""Projection heads that map a tower's embedding into the shared retrieval space."""
from __future__ import annotations

from torch import Tensor, nn

from hybrid_retrieval.errors import BadInputError


class Projection(nn.Module):
    """`linear`: one affine map; `mlp`: Linear-GELU-Linear with a residual path from the linear
    map (the two-layer head of CLAP). Output is not normalised; the model L2-normalises."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise BadInputError(f"projection must be 'linear' or 'mlp', not {kind!r}")
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = (
            nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim)) if kind == "mlp" else None
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return x if self.mlp is None else x + self.mlp(x)
