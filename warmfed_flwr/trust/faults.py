"""Fault injection (test hook): make a client misbehave at the end of fit, as ``faults.*`` configures.

Process faults (``raise``, ``hang``, ``exit``) act on the client; upload faults (``nan``, ``wrong-shape``,
``extra-key``, ``oversize``, ``absurd-examples``) corrupt what it sends, in the form it sends it: named
arrays (the round-0 bundle, before encoding) or a plain weight list. Attacks that pass those checks: ``scale`` and
``sign-flip`` blow up or reverse the update (weights minus the received global model), ``lie-examples`` claims the
largest accepted example count; in round 0, ``swap-rows`` swaps two classes' prompt-embedding rows (a label flip of
the synthetic images) and ``huge-adapter`` multiplies the adapter values.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TypeVar

import numpy as np

from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.wire import protocol
from warmfed_flwr.wire.updates import scale_update

logger = logging.getLogger(__name__)

Upload = TypeVar("Upload", dict[str, np.ndarray], list[np.ndarray])
ABSURD_EXAMPLES = 10**12
EXIT_CODE = 86
EXTRA_KEY = "injected.extra"
UPDATE_SCALE = 1e3
"""``scale``: the update's factor."""
SIGN_FLIP_SCALE = -10.0
"""``sign-flip``: the update's factor (reversed and 10 x longer)."""
ADAPTER_SCALE = 1e4
"""``huge-adapter``: the round-0 adapter values' factor (finite)."""
SWAPPED_ROWS = (0, 1)
"""``swap-rows``: the two classes whose prompt-embedding rows trade places."""
UPDATE_FAULTS = {"scale": UPDATE_SCALE, "sign-flip": SIGN_FLIP_SCALE}
BUNDLE_FAULTS = ("swap-rows", "huge-adapter")


class InjectedFaultError(RuntimeError):
    """The error a client configured with ``faults.kind = raise`` raises."""


def inject(
    cfg: ExperimentConfig, partition_id: int, algo_round: int, upload: Upload, num_examples: int,
    global_weights: list[np.ndarray] | None = None,
) -> tuple[Upload, int]:
    """Misbehave as configured when ``faults`` hits this client and round; otherwise return the upload unchanged.

    ``global_weights`` (the global model the client received) is what ``scale`` and ``sign-flip`` measure the
    update against; they refuse to run without it."""
    kind = cfg.faults.kind
    if not cfg.faults.hits(partition_id, algo_round):
        return upload, num_examples
    where = f"client {partition_id}, round {algo_round}"
    logger.warning("injecting fault '%s' (%s)", kind, where)
    if kind == "raise":
        raise InjectedFaultError(f"injected fault 'raise' ({where})")
    if kind == "hang":
        time.sleep(cfg.faults.hang_seconds)
        return upload, num_examples
    if kind == "exit":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    if kind == "absurd-examples":
        return upload, ABSURD_EXAMPLES
    if kind == "lie-examples":
        return upload, cfg.train.max_client_examples
    if kind in UPDATE_FAULTS:
        if not isinstance(upload, list) or global_weights is None:
            raise ValueError(f"fault kind {kind!r} needs a weight-list upload and the received global weights "
                             f"({where}); inject it in rounds >= 1")
        return scale_update(upload, global_weights, UPDATE_FAULTS[kind]), num_examples
    if kind in BUNDLE_FAULTS:
        if not isinstance(upload, dict):
            raise ValueError(f"fault kind {kind!r} corrupts a round-0 bundle ({where}); inject it in round 0")
        return corrupt_bundle(upload, kind), num_examples
    oversize_bytes = int(cfg.synthesis.max_upload_mb * 2**20) + 4
    return corrupt(upload, kind, oversize_bytes), num_examples


def corrupt(upload: Upload, kind: str, oversize_bytes: int) -> Upload:
    """A copy of ``upload`` damaged by ``kind``: nan, wrong-shape, extra-key or oversize (an extra tensor)."""
    items = list(upload.items()) if isinstance(upload, dict) else [(f"{i:05d}", a) for i, a in enumerate(upload)]
    index = next((i for i, (_, a) in enumerate(items) if a.dtype.kind == "f" and a.size > 1), 0)
    name, first = items[index]
    if kind == "nan":
        items[index] = (name, np.full_like(first, np.nan))
    elif kind == "wrong-shape":
        items[index] = (name, first.reshape(-1)[: max(1, first.size // 2)].copy())
    elif kind == "extra-key":
        items.append((EXTRA_KEY, np.zeros(3, np.float32)))
    elif kind == "oversize":
        items.append((EXTRA_KEY, np.zeros(oversize_bytes // 4 + 1, np.float32)))
    else:
        raise ValueError(f"fault kind {kind!r} does not corrupt an upload")
    return dict(items) if isinstance(upload, dict) else [a for _, a in items]


def corrupt_bundle(named: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """A copy of the round-0 bundle with two class rows of the prompt embeddings swapped (``swap-rows``) or every
    adapter value multiplied by :data:`ADAPTER_SCALE` (``huge-adapter``)."""
    out = dict(named)
    if kind == "swap-rows":
        first, second = SWAPPED_ROWS
        rows = named[protocol.EMBEDDINGS].copy()
        rows[[first, second]] = rows[[second, first]]
        out[protocol.EMBEDDINGS] = rows
        return out
    adapter = [name for name in named if name.startswith(protocol.ADAPTER_PREFIX)]
    if kind != "huge-adapter" or not adapter:
        raise ValueError(f"fault kind {kind!r} does not corrupt this bundle (adapter entries: {len(adapter)})")
    for name in adapter:
        out[name] = named[name] * np.asarray(ADAPTER_SCALE, named[name].dtype)
    return out
