"""Projection heads that map a tower's embedding into the shared retrieval space."""
from __future__ import annotations

from torch import Tensor, nn

from hybrid_retrieval.errors import BadInputError


class Projection(nn.Module):
    """`linear`: one affine map; `mlp`: Linear-GELU-Linear with a residual path from the linear
    map (the two-layer head of CLAP); `identity`: no map at all (the tower's own space, for
    training-free models; in_dim must equal out_dim). Output is not normalised; the model
    L2-normalises."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp", "identity"):
            raise BadInputError(f"projection must be 'linear', 'mlp' or 'identity', not {kind!r}")
        if kind == "identity" and in_dim != out_dim:
            raise BadInputError(f"projection='identity' keeps the tower's {in_dim}-d space: set embed_dim={in_dim}, "
                                f"not {out_dim}")
        self.linear = nn.Identity() if kind == "identity" else nn.Linear(in_dim, out_dim)
        self.mlp = (
            nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim)) if kind == "mlp" else None
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return x if self.mlp is None else x + self.mlp(x)
