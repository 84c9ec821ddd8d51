"""Model updates (weights minus a reference model) as numpy: their norm and scaling, shared by robust aggregation,
the fault hook and local DP. Floating-point arrays only: integer ones (BatchNorm's ``num_batches_tracked``) are no
update direction and stay as they are."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Weights = Sequence[np.ndarray]


def update_norm(weights: Weights, reference: Weights) -> float:
    """L2 norm of ``weights - reference`` over the floating-point arrays, in float64 so huge values do not
    overflow."""
    return math.sqrt(sum(float(np.sum(np.square(w.astype(np.float64) - r.astype(np.float64))))
                         for w, r in zip(weights, reference, strict=True) if w.dtype.kind == "f"))


def scale_update(weights: Weights, reference: Weights, factor: float) -> list[np.ndarray]:
    """``reference + factor x (weights - reference)`` for every floating-point array; integer arrays unchanged."""
    return [(r.astype(np.float64) + (w.astype(np.float64) - r) * factor).astype(w.dtype) if w.dtype.kind == "f" else w
            for w, r in zip(weights, reference, strict=True)]
