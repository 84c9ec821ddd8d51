"""Plain training, fine-tuning and evaluation of a classifier over tensor datasets."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits, labels, sample indices) -> loss; the default is cross-entropy."""
Regularizer = Callable[[nn.Module], torch.Tensor]
"""model -> penalty added to the loss (FedProx, Ditto)."""


def resolve_device(preference: str) -> torch.device:
    """'auto' picks CUDA when this process may use a GPU; 'cpu' and 'cuda' force a device.

    A Ray actor (a simulated client) may use only the GPUs Ray assigned it: Ray lists them in its
    CUDA_VISIBLE_DEVICES, so ``cuda`` (device 0 in the actor) is its own GPU. An actor holding no GPU gets CPU
    even where Ray leaves the GPUs visible (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``, a future Ray default).
    """
    if preference == "cuda":
        return torch.device("cuda")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    if preference == "auto" and not hidden and _ray_actor_gpus() != [] and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _ray_actor_gpus() -> list | None:
    """The GPU ids Ray assigned to this worker process, or None outside a Ray worker (e.g. Ray's driver)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return list(ray.get_gpu_ids())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and keep cuDNN to its deterministic kernels (no autotuning), so a run repeats
    (docs/reproducibility.md)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state (parameters and buffers) as NumPy arrays, in state_dict order."""
    return [t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
            for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` into ``model``."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} arrays for the model, got {len(weights)}")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"array for '{key}' has shape {tuple(array.shape)}, expected {tuple(current.shape)}")
        new_state[key] = torch.as_tensor(array).to(current.dtype)
    model.load_state_dict(new_state)


class _Indexed(Dataset):
    """Wraps a (x, y) dataset to also yield each sample's index."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, y, index


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader yielding (x, y, index) with a seeded shuffle."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=shuffle, generator=generator)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped horizontally with probability 1/2, then zero-padded by 1/8 of its side and cropped back at
    a random offset (pad-crop), every draw from ``generator``."""
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, _indices: torch.Tensor) -> torch.Tensor:
    """The default objective."""
    return F.cross_entropy(logits, labels)


def train_epochs(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    objective: Objective = cross_entropy,
    regularizer: Regularizer | None = None,
    freeze_bn_stats: bool = False,
    augment: str = "none",
) -> float:
    """Train ``model`` in place with SGD for ``epochs``; returns the mean loss of the last epoch.

    ``augment = flip-crop`` passes every training batch through :func:`augment_batch`, its draws seeded by ``seed``
    (the shuffle order stays that of ``none``).

    ``freeze_bn_stats`` keeps BatchNorm layers in eval mode: their affine weights train, their running
    statistics (and the batch statistics they normalise with) stay those the model arrived with.
    """
    if epochs <= 0 or len(dataset) == 0:  # type: ignore[arg-type]
        return float("nan")
    model.to(device).train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    augmenter = torch.Generator().manual_seed(seed) if augment == "flip-crop" else None
    mean_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y, idx in loader:
            if augmenter is not None:
                x = augment_batch(x, augmenter)
            x, y = x.to(device), y.to(device)
            loss = objective(model(x), y, idx.to(device))
            if regularizer is not None:
                loss = loss + regularizer(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
        mean_loss = total / max(count, 1)
    return mean_loss


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Logits for every sample of ``dataset`` in order, on the CPU."""
    model.to(device).eval()
    outputs = [model(x.to(device)).cpu() for x, _y, _i in make_loader(dataset, batch_size, shuffle=False)]
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``dataset``."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        return float("nan"), float("nan")
    logits = predict_logits(model, dataset, device, batch_size)
    labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def proximal_term(global_params: Sequence[torch.Tensor], mu: float) -> Regularizer:
    """FedProx's (mu/2)||w - w_global||^2 over trainable parameters."""
    anchors = [p.detach().clone() for p in global_params]

    def penalty(model: nn.Module) -> torch.Tensor:
        pairs = zip(model.parameters(), anchors, strict=True)
        return 0.5 * mu * sum(((p - a.to(p.device)) ** 2).sum() for p, a in pairs)

    return penalty
