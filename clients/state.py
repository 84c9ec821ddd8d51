"""Named arrays kept in a client's ``context.state`` across rounds (simulation and deployment)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context


def load_arrays(context: Context, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key``, or None when nothing was stored yet."""
    if key not in context.state:
        return None
    record = context.state[key]
    return {name: record[name].numpy() for name in record}


def save_arrays(context: Context, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``key``, replacing what was there."""
    context.state[key] = ArrayRecord(array_dict={name: Array(np.asarray(a, order="C")) for name, a in arrays.items()})
