"""Fault injection (test hook): make a client misbehave at the end of fit, as ``faults.*`` configures.

Process faults (``raise``, ``hang``, ``exit``) act on the client; upload faults (``nan``, ``wrong-shape``,
``extra-key``, ``oversize``, ``absurd-examples``) corrupt what it sends, in the form it sends it: named
arrays (the round-0 bundle, before encoding) or a plain weight list.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TypeVar

import numpy as np

from warmfed_flwr.config import ExperimentConfig

logger = logging.getLogger(__name__)

Upload = TypeVar("Upload", dict[str, np.ndarray], list[np.ndarray])
ABSURD_EXAMPLES = 10**12
EXIT_CODE = 86
EXTRA_KEY = "injected.extra"


class InjectedFaultError(RuntimeError):
    """The error a client configured with ``faults.kind = raise`` raises."""


def inject(
    cfg: ExperimentConfig, partition_id: int, algo_round: int, upload: Upload, num_examples: int
) -> tuple[Upload, int]:
    """Misbehave as configured when ``faults`` hits this client and round; otherwise return the upload unchanged."""
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
