"""WarmFed's Dynamic Self-Distillation (DSD) and pFedSD, the personalizations that distill from earlier rounds.

DSD follows docs/algorithm.md, steps 9-12: the personalized student trains on the client's data with
cross-entropy plus a temperature-scaled KL term towards a per-sample teacher, chosen among the
logits of the client's personalized models of the last two rounds (the :class:`LogitPool`) by a
small learnable selector with a hard, straight-through Gumbel-Softmax. pFedSD is the same loop with
the teacher fixed to round t-1. All state kept between rounds converts to and from
``dict[str, np.ndarray]`` so that it fits Flower's ``context.state``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import Dataset

from warmfed_flwr.config.schema import PersonalizationConfig
from warmfed_flwr.learning.training import Objective, cross_entropy, predict_logits, train_epochs

POOL_SIZE = 2
"""How many rounds of logits DSD keeps (rounds t-1 and t-2)."""
POOL_PREFIX = "pool."


@dataclass
class LogitPool:
    """Per-sample logits on the client's train split from its personalized models of the last rounds (newest first)."""

    entries: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        shapes = {tuple(np.shape(e)) for e in self.entries}
        if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
            raise ValueError(f"pool entries must all be [N, C] arrays of one shape, got shapes {sorted(shapes)}")
        self.entries = [np.asarray(e, dtype=np.float32) for e in self.entries]

    def push(self, logits: np.ndarray, keep: int = POOL_SIZE) -> LogitPool:
        """A new pool with ``logits`` first, keeping the newest ``keep`` entries."""
        if keep < 1:
            raise ValueError(f"a logit pool keeps at least one entry, got keep={keep}")
        return LogitPool([np.asarray(logits, dtype=np.float32), *self.entries][:keep])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The pool as named arrays ({"pool.0": newest, "pool.1": ...}) for Flower's context.state."""
        return {f"{POOL_PREFIX}{i}": entry for i, entry in enumerate(self.entries)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LogitPool:
        """Rebuild a pool from :meth:`to_arrays` output; other keys are ignored, a missing pool gives an empty one."""
        entries = []
        while f"{POOL_PREFIX}{len(entries)}" in arrays:
            entries.append(np.asarray(arrays[f"{POOL_PREFIX}{len(entries)}"]))
        return cls(entries)


def gumbel_tau(round_idx: int, total_rounds: int, tau_start: float, tau_end: float) -> float:
    """Gumbel-Softmax temperature annealed geometrically from ``tau_start`` (round 1) to ``tau_end`` (last round)."""
    if tau_start <= 0 or tau_end <= 0:
        raise ValueError(f"Gumbel temperatures must be positive, got tau_start={tau_start}, tau_end={tau_end}")
    if total_rounds <= 1:
        return float(tau_start)
    progress = (min(max(round_idx, 1), total_rounds) - 1) / (total_rounds - 1)
    return float(tau_start * (tau_end / tau_start) ** progress)


class TeacherSelector(nn.Module):
    """Scores each candidate teacher per sample from the candidates' logits (docs/algorithm.md, step 11)."""

    def __init__(self, num_classes: int, num_candidates: int, hidden: int = 32, sees_label: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_candidates = num_candidates
        self.sees_label = sees_label
        # Per candidate: its softmax, max probability, normalized entropy, a one-hot of its slot (its age) and,
        # when the selector sees the label, the candidate's probability of the sample's true class.
        width = num_classes + 2 + num_candidates + int(sees_label)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def features(self, candidates: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-candidate inputs [N, K, C + 2 + K (+1)]: softmax, max probability, normalized entropy, one-hot slot
        (and the true class's probability, which needs ``labels``)."""
        if self.sees_label and labels is None:
            raise ValueError("this selector sees the label: pass the samples' labels")
        n, k, c = candidates.shape
        if (k, c) != (self.num_candidates, self.num_classes):
            raise ValueError(
                f"selector expects [N, {self.num_candidates}, {self.num_classes}] candidates, "
                f"got {tuple(candidates.shape)}"
            )
        log_probs = F.log_softmax(candidates, dim=-1)
        probs = log_probs.exp()
        max_prob = probs.amax(dim=-1, keepdim=True)
        entropy = -(probs * log_probs).sum(dim=-1, keepdim=True) / max(math.log(c), 1.0)
        slot = torch.eye(k, device=candidates.device, dtype=candidates.dtype).expand(n, k, k)
        parts = [probs, max_prob, entropy, slot]
        if self.sees_label:
            index = labels.to(candidates.device).long().view(n, 1, 1).expand(n, k, 1)
            parts.append(probs.gather(-1, index))
        return torch.cat(parts, dim=-1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Scores [N, K] from precomputed :meth:`features`."""
        return self.mlp(features).squeeze(-1)

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        """Scores [N, K] for candidate logits [N, K, C]."""
        return self.score(self.features(candidates))


def select_teachers(
    candidates: torch.Tensor, labels: torch.Tensor, tau: float, steps: int, lr: float, seed: int,
    sees_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a fresh selector on candidates [K, N, C]; return (chosen teacher logits [N, C], choice [N]).

    ``sees_label`` also feeds each candidate's probability of the sample's true class to the selector (the labels of
    the client's own train split are known when it distills on them).
    """
    if candidates.dim() != 3 or candidates.shape[1] != labels.shape[0]:
        raise ValueError(
            f"candidates must be [K, N, C] with N = {labels.shape[0]} labels, got {tuple(candidates.shape)}"
        )
    num_candidates, num_samples, num_classes = candidates.shape
    device = candidates.device
    stacked = candidates.detach().float().cpu().transpose(0, 1).contiguous()  # [N, K, C]
    targets = labels.detach().long().cpu()
    if num_candidates == 1:  # nothing to choose: the only candidate is the teacher
        choice = torch.zeros(num_samples, dtype=torch.long)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            selector = TeacherSelector(num_classes, num_candidates, sees_label=sees_label)
            optimizer = torch.optim.Adam(selector.parameters(), lr=lr)
            features = selector.features(stacked, targets)  # the candidates are fixed: compute the inputs once
            for _ in range(steps):
                onehot = F.gumbel_softmax(selector.score(features), tau=tau, hard=True)  # [N, K], straight-through
                teacher = (onehot.unsqueeze(-1) * stacked).sum(dim=1)
                loss = F.cross_entropy(teacher, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                choice = selector.score(features).argmax(dim=1)
    teacher_logits = stacked[torch.arange(num_samples), choice]
    return teacher_logits.to(device), choice.to(device)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch; the teacher is detached."""
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def distillation_objective(teacher_logits: torch.Tensor | None, lam: float, temperature: float) -> Objective:
    """CE + lam * T^2 * KL towards the teacher row of each sample index; plain cross-entropy for no teacher."""
    if teacher_logits is None:
        return cross_entropy
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    teacher = teacher_logits.detach()

    def objective(logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        target = teacher[indices.to(teacher.device)].to(logits.device)
        return F.cross_entropy(logits, labels) + lam * distillation_kl(logits, target, temperature)

    return objective


def _labels(dataset: Dataset) -> torch.Tensor:
    """Every label of ``dataset`` in order."""
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


def _check_pool(pool: LogitPool, train_set: Dataset) -> None:
    """Raise when the pool's logits do not have one row per training sample."""
    num_samples = len(train_set)  # type: ignore[arg-type]
    if pool.entries and pool.entries[0].shape[0] != num_samples:
        raise ValueError(
            f"logit pool has {pool.entries[0].shape[0]} rows but the train split has {num_samples} samples; "
            "the pool belongs to a different split, clear the client's state"
        )


def _distill_and_push(
    model: nn.Module,
    train_set: Dataset,
    pool: LogitPool,
    teacher: torch.Tensor | None,
    cfg: PersonalizationConfig,
    keep: int,
    train_kwargs: dict[str, Any],
) -> tuple[LogitPool, float]:
    """Train ``model`` towards ``teacher`` (CE alone when None), then push its train-split logits."""
    objective = distillation_objective(teacher, cfg.dsd_lambda, cfg.dsd_temperature)
    loss = train_epochs(model, train_set, epochs=cfg.epochs, objective=objective, **train_kwargs)
    logits = predict_logits(model, train_set, train_kwargs["device"]).numpy()
    return pool.push(logits, keep=keep), loss


def train_dsd(
    model: nn.Module,
    train_set: Dataset,
    pool: LogitPool,
    round_idx: int,
    total_rounds: int,
    cfg: PersonalizationConfig,
    *,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> tuple[LogitPool, dict[str, float]]:
    """One round of DSD (steps 8-11): select per-sample teachers from the pool, distill, push the new logits."""
    _check_pool(pool, train_set)
    tau = gumbel_tau(round_idx, total_rounds, cfg.tau_start, cfg.tau_end)
    metrics: dict[str, float] = {"dsd_tau": tau, "dsd_candidates": float(len(pool.entries))}
    teacher = None
    if pool.entries:
        labels = _labels(train_set)
        candidates = torch.stack([torch.from_numpy(e) for e in pool.entries])
        teacher, choice = select_teachers(candidates, labels, tau, cfg.selector_steps, cfg.selector_lr, seed,
                                          cfg.selector_sees_label)
        for k in range(POOL_SIZE):
            metrics[f"dsd_share_t{k + 1}"] = float((choice == k).float().mean())
        metrics["dsd_teacher_acc"] = float((teacher.argmax(1) == labels).float().mean())
    train_kwargs = {"lr": lr, "batch_size": batch_size, "device": device, "seed": seed,
                    "momentum": momentum, "weight_decay": weight_decay}
    new_pool, metrics["train_loss"] = _distill_and_push(model, train_set, pool, teacher, cfg, POOL_SIZE, train_kwargs)
    return new_pool, metrics


def train_pfedsd(
    model: nn.Module,
    train_set: Dataset,
    pool: LogitPool,
    cfg: PersonalizationConfig,
    *,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> tuple[LogitPool, dict[str, float]]:
    """One round of pFedSD: distill from round t-1's logits only; the returned pool keeps that one entry."""
    _check_pool(pool, train_set)
    teacher = torch.from_numpy(pool.entries[0]) if pool.entries else None
    metrics: dict[str, float] = {}
    if teacher is not None:
        metrics["dsd_share_t1"] = 1.0
        metrics["dsd_teacher_acc"] = float((teacher.argmax(1) == _labels(train_set)).float().mean())
    train_kwargs = {"lr": lr, "batch_size": batch_size, "device": device, "seed": seed,
                    "momentum": momentum, "weight_decay": weight_decay}
    new_pool, metrics["train_loss"] = _distill_and_push(model, train_set, pool, teacher, cfg, 1, train_kwargs)
    return new_pool, metrics
