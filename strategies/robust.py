"""Robust aggregation of rounds >= 1 on Flower's aggregation functions: update norm clipping, the example-count
weighting of the mean, and the coordinate-wise median and trimmed mean."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg

from warmfed_flwr.config.schema import TrainConfig

Weights = Sequence[np.ndarray]


def example_weights(counts: Sequence[int], rule: str, cap_factor: float) -> list[float]:
    """Each client's weight in the mean: its reported count (``examples``), 1 (``uniform``), or its count capped at
    ``cap_factor`` x the low median of ``counts`` (``capped``)."""
    if rule == "uniform":
        return [1.0] * len(counts)
    if rule == "capped":
        cap = cap_factor * statistics.median_low(counts)
        return [float(min(count, cap)) for count in counts]
    return [float(count) for count in counts]


def trimmed_per_side(clients: int, trim_fraction: float) -> int:
    """Clients the trimmed mean cuts from each end of every coordinate (Flower's ``int(fraction x clients)``)."""
    return int(trim_fraction * clients)


def combine(uploads: Sequence[Weights], counts: Sequence[int], train: TrainConfig) -> list[np.ndarray]:
    """The clients' weights combined by ``train.aggregation``, each array back in its upload's dtype (integer
    arrays rounded)."""
    if train.aggregation == "median":
        combined = aggregate_median([(list(w), 1) for w in uploads])
    elif train.aggregation == "trimmed-mean":
        combined = aggregate_trimmed_avg([(list(w), 1) for w in uploads], train.trim_fraction)
    else:
        shares = example_weights(counts, train.example_weighting, train.example_cap_factor)
        combined = aggregate([(list(w), share) for w, share in zip(uploads, shares, strict=True)])
    return [_as_dtype(array, like.dtype) for array, like in zip(combined, uploads[0], strict=True)]


def _as_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(array)
    return (array if dtype.kind == "f" else np.rint(array)).astype(dtype, copy=False)


def aggregation_record(counts: Sequence[int], train: TrainConfig) -> dict[str, float]:
    """What a round records of its aggregation: the largest client share of the mean (``weight_share_max``) or
    the clients the trimmed mean cut from each end (``clients_trimmed_per_side``); nothing for the median."""
    if train.aggregation == "trimmed-mean":
        return {"clients_trimmed_per_side": trimmed_per_side(len(counts), train.trim_fraction)}
    if train.aggregation == "median":
        return {}
    shares = example_weights(counts, train.example_weighting, train.example_cap_factor)
    return {"weight_share_max": max(shares) / sum(shares)}
