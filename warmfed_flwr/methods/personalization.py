"""Client-side personalization besides self-distillation (methods/self_distillation.py): Ditto, FedBN and local
fine-tuning (FedAvg + fine-tuning)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from warmfed_flwr.config.schema import PersonalizationConfig
from warmfed_flwr.learning.training import proximal_term, train_epochs


def train_ditto(
    personal_model: nn.Module,
    global_weights: Sequence[torch.Tensor],
    train_set: Dataset,
    cfg: PersonalizationConfig,
    *,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> dict[str, float]:
    """Ditto's personal update: CE + (ditto_lambda/2)||w - w_global||^2 over the parameters, in place."""
    params = list(personal_model.parameters())
    if len(global_weights) != len(params) or any(
        g.shape != p.shape for g, p in zip(global_weights, params, strict=True)
    ):
        raise ValueError("global_weights must match the personal model's parameters() in number, order and shape")
    anchors = [g.detach().to(device) for g in global_weights]
    loss = train_epochs(
        personal_model, train_set, epochs=cfg.epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
        momentum=momentum, weight_decay=weight_decay, regularizer=proximal_term(anchors, cfg.ditto_lambda),
    )
    with torch.no_grad():
        pairs = zip(personal_model.parameters(), anchors, strict=True)
        distance = math.sqrt(sum(float(((p - a) ** 2).sum()) for p, a in pairs))
    return {"train_loss": loss, "ditto_distance": distance}


def train_finetune(
    model: nn.Module,
    train_set: Dataset,
    cfg: PersonalizationConfig,
    *,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> dict[str, float]:
    """Local fine-tuning, the simple personalization baseline: ``model`` (the round's global model) trained in place
    on ``train_set`` with cross-entropy for ``cfg.epochs`` epochs."""
    loss = train_epochs(model, train_set, epochs=cfg.epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
                        momentum=momentum, weight_decay=weight_decay)
    return {"train_loss": loss}


def fedbn_local_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of the model's BatchNorm layers, which FedBN keeps local (in state_dict order)."""
    local = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            local.update(f"{name}.{key}" if name else key for key in module.state_dict())
    return [key for key in model.state_dict() if key in local]


def merge_fedbn(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor | np.ndarray],
    local_state: Mapping[str, torch.Tensor | np.ndarray] | None,
) -> None:
    """Load ``global_state`` into ``model``, keeping the BatchNorm entries of ``local_state`` when given."""
    merged = {key: torch.as_tensor(value) for key, value in global_state.items()}
    if local_state is not None:
        missing = [key for key in fedbn_local_keys(model) if key not in local_state]
        if missing:
            raise ValueError(f"local FedBN state lacks BatchNorm entries {missing}")
        merged.update({key: torch.as_tensor(local_state[key]) for key in fedbn_local_keys(model)})
    model.load_state_dict(merged)
