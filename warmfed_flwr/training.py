"""Plain training, fine-tuning and evaluation of a classifier over tensor datasets."""

from __future__ import annotations

import random
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
    """'auto' picks CUDA when visible; 'cpu' and 'cuda' force a device."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run repeats."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
) -> float:
    """Train ``model`` in place with SGD for ``epochs``; returns the mean loss of the last epoch.

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
    mean_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y, idx in loader:
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
