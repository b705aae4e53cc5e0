"""Linear CKA (Kornblith et al., 2019) between two representations of the same samples."""
from __future__ import annotations

from torch import Tensor


def linear_cka(x: Tensor, y: Tensor) -> float:
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred features; x: (n, p), y: (n, q)."""
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = (y.t() @ x).norm() ** 2
    norm = (x.t() @ x).norm() * (y.t() @ y).norm()
    return float(cross / norm) if norm > 0 else 0.0
