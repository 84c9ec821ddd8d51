"""WarmFed and FGL training on the synthetic data: the server's one-shot (warm-start) model, each client's synthetic
quality and the globalization fine-tunes, on the server (the aggregate on the synthetic subset) and on a client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import (
    Objective,
    cross_entropy,
    evaluate,
    get_weights,
    predict_logits,
    set_weights,
    train_epochs,
)
from warmfed_flwr.methods.self_distillation import distillation_kl
from warmfed_flwr.methods.synthetic_set import SyntheticSetBuilder


class SyntheticWarmStart(SyntheticSetBuilder):
    """The server's WarmFed/FGL work, apart from Flower: round 0's synthetic set and subset
    (:class:`SyntheticSetBuilder`), the one-shot (warm-start) model trained on it, and later rounds' server fine-tuning
    of the aggregated model on the subset."""

    def __init__(self, cfg: ExperimentConfig, class_names: list[str], device: torch.device,
                 cache_dir: Path, output_dir: Path) -> None:
        super().__init__(cfg, class_names, device, cache_dir, output_dir)
        self.model = seeded_model(cfg.model, len(class_names), cfg.seed)

    def synthetic_quality(self, tests: dict[str, Dataset]) -> dict[str, float]:
        """Per client: a classifier trained on that client's synthetic images, accuracy on its real ``tests`` split."""
        assert self.synthetic is not None, "build_synthetic must run first"
        sources = np.array(self.synthetic.sources)
        quality = {}
        for client in dict.fromkeys(self.synthetic.sources):
            if client not in tests:
                continue
            mine = torch.from_numpy(np.flatnonzero(sources == client))
            judge = seeded_model(self.cfg.model, len(self.class_names), self.cfg.seed)
            t = self.cfg.train
            train_epochs(judge, self.synthetic.dataset(mine),
                         epochs=self.cfg.warmfed.warm_epochs, lr=t.lr, batch_size=t.batch_size, device=self.device,
                         seed=self.cfg.seed, momentum=t.momentum, weight_decay=t.weight_decay)
            quality[client] = evaluate(judge, tests[client], self.device)[1]
        return quality

    def train_warm_start(self) -> list[np.ndarray]:
        """Train the one-shot global model on the whole synthetic set."""
        assert self.synthetic is not None, "build_synthetic must run first"
        self._train(self.synthetic.dataset(), self.cfg.warmfed.warm_epochs, seed=self.cfg.seed)
        return get_weights(self.model)

    def finetune(self, weights: list[np.ndarray], algo_round: int,
                 client_weights: list[list[np.ndarray]] | None = None) -> list[np.ndarray]:
        """Server-side globalization: fine-tune the aggregate on the synthetic subset.

        ``warmfed.server-ft-target = ensemble`` distills, instead of the subset's labels, the mean logits of the
        clients' uploaded models (``client_weights``) on the subset, as in FedDF's ensemble distillation.
        """
        w = self.cfg.warmfed
        tune = self.subset is not None and w.server_finetune
        objective = self._server_objective(client_weights) if tune else cross_entropy
        set_weights(self.model, weights)
        if tune:
            self._train(self.subset, w.server_ft_epochs, seed=self.cfg.seed + algo_round,
                        lr_scale=w.syn_lr_scale, freeze_bn_stats=w.syn_bn_stats == "frozen", objective=objective)
        return get_weights(self.model)

    def _server_objective(self, client_weights: list[list[np.ndarray]] | None) -> Objective:
        """Cross-entropy on the subset's labels, or KL towards the clients' mean logits (``ensemble``)."""
        if self.cfg.warmfed.server_ft_target == "labels":
            return cross_entropy
        if not client_weights:
            raise ValueError("warmfed.server-ft-target = ensemble needs the clients' uploaded weights")
        return self._ensemble_objective(client_weights)

    def _ensemble_objective(self, client_weights: list[list[np.ndarray]]) -> Objective:
        """KL towards the clients' mean logits on each subset image."""
        assert self.subset is not None
        logits = []
        for weights in client_weights:
            set_weights(self.model, weights)
            logits.append(predict_logits(self.model, self.subset, self.device))
        teacher = torch.stack(logits).mean(0)

        def objective(outputs: torch.Tensor, _labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            return distillation_kl(outputs, teacher[indices.cpu()].to(outputs.device), 1.0)

        return objective

    def _train(self, dataset: Dataset, epochs: int, seed: int, lr_scale: float = 1.0,
               freeze_bn_stats: bool = False, objective: Objective = cross_entropy) -> None:
        t = self.cfg.train
        train_epochs(self.model, dataset, epochs=epochs, lr=t.lr * lr_scale, batch_size=t.batch_size,
                     device=self.device, seed=seed, momentum=t.momentum, weight_decay=t.weight_decay,
                     freeze_bn_stats=freeze_bn_stats, objective=objective, augment=t.augment)


def globalize_client(
    model: torch.nn.Module, subset: Dataset | None, split: ClientSplit, cfg: ExperimentConfig,
    device: torch.device, seed: int,
) -> float:
    """Rounds t>=1 on a client: fine-tune on the synthetic subset, then train on private data.

    ``warmfed.client-syn-mode = mixed`` instead trains each local epoch on the private data and the subset shuffled
    together (BatchNorm statistics then see both).
    """
    t, w = cfg.train, cfg.warmfed
    private: Dataset = split.train
    if subset is not None and w.client_syn_finetune:
        if w.client_syn_mode == "mixed":
            private = ConcatDataset([split.train, subset])
        else:
            train_epochs(model, subset, epochs=w.client_syn_epochs, lr=t.lr * w.syn_lr_scale,
                         batch_size=t.batch_size, device=device, seed=seed, momentum=t.momentum,
                         weight_decay=t.weight_decay, freeze_bn_stats=w.syn_bn_stats == "frozen", augment=t.augment)
    return train_epochs(model, private, epochs=t.local_epochs, lr=t.lr, batch_size=t.batch_size,
                        device=device, seed=seed + 1, momentum=t.momentum, weight_decay=t.weight_decay,
                        augment=t.augment)
