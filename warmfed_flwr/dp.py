"""Local differential privacy on client uploads: clip to an L2 norm, then add Gaussian noise (docs/algorithm.md).

Framework-free (numpy only). Noise std is ``noise_multiplier x clip_norm`` per value; there is no privacy accountant.
"""

from __future__ import annotations

import numpy as np

from warmfed_flwr import protocol

CLIPPED_METRIC = "dp_clipped"
"""Fit metric key: 1 when DP clipping scaled any part of the upload down, else 0 (sent only while DP is on)."""


RUNNING_STATISTICS = ("running_mean", "running_var")
"""BatchNorm buffers estimated from the private data: never uploaded under DP (noise would make variances negative)."""


def round_rng(secret: int, algo_round: int) -> np.random.Generator:
    """The noise generator of one client in one algorithm round. ``secret`` must be the client's own (never derived
    from the run config, which the server knows, or the server could regenerate and subtract the noise)."""
    return np.random.default_rng([secret, algo_round])


def clip_and_noise(tensors: list[np.ndarray], clip_norm: float, noise_multiplier: float,
                   rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """``tensors`` scaled together (as one vector) to L2 norm <= ``clip_norm``, plus N(0, (noise_multiplier x
    clip_norm)^2) on every value; each keeps its dtype. Also whether the scaling cut the norm."""
    values = [t.astype(np.float64) for t in tensors]
    norm = float(np.sqrt(sum(float(np.sum(v * v)) for v in values)))
    clipped = norm > clip_norm
    scale = clip_norm / norm if clipped else 1.0
    std = noise_multiplier * clip_norm
    noised = [v * scale + (rng.normal(0.0, std, v.shape) if std > 0 else 0.0) for v in values]
    return [n.astype(t.dtype) for n, t in zip(noised, tensors, strict=True)], clipped


def privatize_update(weights: list[np.ndarray], global_weights: list[np.ndarray], names: list[str], clip_norm: float,
                     noise_multiplier: float, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """``weights`` whose floating-point update (weights - ``global_weights``) is clipped to ``clip_norm`` and
    noised, added back to the global weights; BatchNorm running statistics (by their state_dict ``names``) go back
    to the global ones (they would carry private data, and noise would make variances negative); integer arrays
    (BatchNorm counters) stay as they are."""
    private = list(weights)
    trained = []
    for i, (weight, name) in enumerate(zip(weights, names, strict=True)):
        if name.endswith(RUNNING_STATISTICS):
            private[i] = global_weights[i]
        elif np.issubdtype(weight.dtype, np.floating):
            trained.append(i)
    updates = [weights[i].astype(np.float64) - global_weights[i].astype(np.float64) for i in trained]
    noised, clipped = clip_and_noise(updates, clip_norm, noise_multiplier, rng)
    for i, update in zip(trained, noised, strict=True):
        private[i] = (global_weights[i].astype(np.float64) + update).astype(weights[i].dtype)
    return private, clipped


def privatize_round0(named: dict[str, np.ndarray], adapter_clip_norm: float, embedding_clip_norm: float,
                     noise_multiplier: float, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], bool]:
    """A round-0 upload with its adapter (every ``protocol.ADAPTER_PREFIX`` entry together) clipped to
    ``adapter_clip_norm`` and each class's row of ``protocol.EMBEDDINGS`` clipped to ``embedding_clip_norm``, each
    then noised with std noise_multiplier x its clip norm. Also whether any clipping cut a norm."""
    private = dict(named)
    adapter_keys = sorted(k for k in named if k.startswith(protocol.ADAPTER_PREFIX))
    clipped = False
    if adapter_keys:
        adapter, clipped = clip_and_noise([named[k] for k in adapter_keys], adapter_clip_norm, noise_multiplier, rng)
        private.update(zip(adapter_keys, adapter, strict=True))
    embeddings = named[protocol.EMBEDDINGS]
    rows = [clip_and_noise([row], embedding_clip_norm, noise_multiplier, rng) for row in embeddings]
    private[protocol.EMBEDDINGS] = np.stack([row[0] for row, _ in rows]).astype(embeddings.dtype)
    return private, clipped or any(cut for _, cut in rows)
