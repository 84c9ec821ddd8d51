"""Local differential privacy on client uploads: clip to an L2 norm, add Gaussian noise, account (docs/privacy.md).

Framework-free (numpy and dp-accounting, the accountant Flower's own DP accounting wraps). Noise std is
``noise_multiplier x clip_norm`` per value; the RDP accountant turns a run's noised releases into its (epsilon, delta).
"""

from __future__ import annotations

from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

from warmfed_flwr.config.schema import GENERATIVE_ALGORITHMS, UPLOADING_ALGORITHMS, ExperimentConfig
from warmfed_flwr.wire import protocol

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


REPLACE_ONE_SENSITIVITY = 2.0
"""Any two datasets of a client give clipped upload parts (L2 norm <= clip) at most 2 x clip apart: noise of std
noise_multiplier x clip is then a Gaussian mechanism of noise multiplier noise_multiplier / 2 (replace-one)."""


def client_releases(cfg: ExperimentConfig, num_classes: int) -> int:
    """Noised upload parts one client sends at most over the run: at round 0 of warmfed and fgl its adapter (when
    LoRA is on) and one prompt-embedding row per class, then one update in every round >= 1 (as if sampled in
    each); 0 for algorithms whose server ignores uploads (local-only, centralized)."""
    if cfg.algorithm not in UPLOADING_ALGORITHMS:
        return 0
    round0 = int(cfg.lora.enabled) + num_classes if cfg.algorithm in GENERATIVE_ALGORITHMS else 0
    return round0 + cfg.train.rounds


def releases_event(noise_multiplier: float, releases: int) -> dp_accounting.DpEvent:
    """``releases`` Gaussian releases of ``noise_multiplier`` (std / clip norm), replace-one, no sampling."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY), releases)


def epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The epsilon at ``delta`` of ``releases`` noised upload parts of one client (RDP accountant)."""
    accountant = RdpAccountant()
    accountant.compose(releases_event(noise_multiplier, releases))
    return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, releases: int, delta: float) -> float:
    """The smallest noise multiplier whose ``releases`` stay within (``target_epsilon``, ``delta``)."""
    return float(dp_accounting.calibrate_dp_mechanism(RdpAccountant, lambda sigma: releases_event(sigma, releases),
                                                      target_epsilon, delta))


def with_privacy_budget(cfg: ExperimentConfig, num_classes: int) -> ExperimentConfig:
    """``cfg`` with privacy.noise-multiplier calibrated to privacy.target-epsilon at privacy.delta (``cfg`` itself
    when no target is set or the algorithm uploads nothing)."""
    privacy = cfg.privacy
    releases = client_releases(cfg, num_classes)
    if not privacy.target_epsilon or not releases:
        return cfg
    sigma = calibrate_noise(privacy.target_epsilon, releases, privacy.delta)
    return cfg.model_copy(update={"privacy": privacy.model_copy(update={"noise_multiplier": sigma})})


def privacy_budget(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """What a DP run reports (privacy.target-epsilon applied): epsilon at privacy.delta over a client's releases,
    with how it was accounted ({} without DP)."""
    privacy = with_privacy_budget(cfg, num_classes).privacy
    releases = client_releases(cfg, num_classes)
    if not privacy.noise_multiplier or not releases:
        return {}
    return {"epsilon": epsilon(privacy.noise_multiplier, releases, privacy.delta), "delta": privacy.delta,
            "noise_multiplier": privacy.noise_multiplier, "releases_per_client": releases,
            "target_epsilon": privacy.target_epsilon,
            "accountant": "RDP (dp-accounting), client-level local DP, replace-one, every round counted"}
