"""Centralized training on every client's pooled train data: the upper reference."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import Benchmark
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import get_weights, train_epochs


class CentralizedTrainer:
    """Holds one model and trains it ``train.centralized-epochs`` per round on the pooled data."""

    def __init__(self, cfg: ExperimentConfig, benchmark: Benchmark, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.pooled = ConcatDataset([client.train for client in benchmark.clients])
        self.model = seeded_model(cfg.model, len(benchmark.class_names), cfg.seed)

    def train_round(self, server_round: int) -> None:
        """Train the pooled model for one round."""
        t = self.cfg.train
        train_epochs(self.model, self.pooled, epochs=t.centralized_epochs, lr=t.lr, batch_size=t.batch_size,
                     device=self.device, seed=self.cfg.seed + server_round, momentum=t.momentum,
                     weight_decay=t.weight_decay, augment=t.augment)

    def weights(self) -> list[np.ndarray]:
        """The current weights."""
        return get_weights(self.model)
