"""Fast random stand-ins for the digits domain builders, for tests of the data path."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from warmfed_flwr.data import digits
from warmfed_flwr.data.partition import DomainArrays


def install_fake_digits(monkeypatch: pytest.MonkeyPatch, counts: Sequence[int], shuffle_labels: bool) -> list[str]:
    """Replace every digits domain builder with one that makes ``counts[i]`` random uint8 images (labels cycling
    over the 10 classes, shuffled when ``shuffle_labels``); returns the list the domains are appended to as built."""
    built: list[str] = []

    def builder(name: str, index: int) -> Callable[[int], DomainArrays]:
        def build(size: int) -> DomainArrays:
            built.append(name)
            rng = np.random.default_rng(index)
            labels = np.arange(counts[index], dtype=np.int64) % 10
            return DomainArrays(rng.integers(0, 256, (counts[index], size, size, 3), dtype=np.uint8),
                                rng.permutation(labels) if shuffle_labels else labels)
        return build

    for i, name in enumerate(digits.DOMAINS):
        monkeypatch.setitem(digits._BUILDERS, name, builder(name, i))
    return built
