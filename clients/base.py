"""The NumPyClient every algorithm shares: private training, personalization and evaluation."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from clients.state import load_arrays, save_arrays
from warmfed_flwr.config.loading import key_is_used
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.learning.models import build_model
from warmfed_flwr.learning.training import evaluate, get_weights, proximal_term, set_weights, train_epochs
from warmfed_flwr.methods import personalization, self_distillation
from warmfed_flwr.trust import dp, faults
from warmfed_flwr.wire import payload, protocol

logger = logging.getLogger(__name__)

PERSONAL = "personal"
POOL = "dsd-pool"
LOCAL_BN = "fedbn-local"
DP_SECRET = "dp-secret"
RESUMABLE_STATE = (PERSONAL, POOL, LOCAL_BN, DP_SECRET)
"""``context.state`` keys snapshotted on disk after every fit so that a resumed run restores them (clients/state.py);
WarmFed's synthetic subset is not one: the server sends it again after a resume."""


class FederatedClient(NumPyClient):
    """Trains the received weights on the client's private split; keeps a personalized model in state."""

    def __init__(self, cfg: ExperimentConfig, class_names: list[str], split: ClientSplit, partition_id: int,
                 context: Context, device: torch.device, cache_dir: Path) -> None:
        self.cfg = cfg
        self.class_names = class_names
        self.split = split
        self.partition_id = partition_id
        self.context = context
        self.device = device
        self.cache_dir = cache_dir
        self.seed = cfg.seed * 1000 + partition_id
        self.model = build_model(cfg.model, len(self.class_names))

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """The current model weights."""
        return get_weights(self.model)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """This client's name (what the server's round-0 sample is drawn over)."""
        return self.identity()

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train on private data from the received weights, then personalize."""
        started = time.perf_counter()
        algo_round = int(config[protocol.ROUND])
        global_weights = [np.copy(w) for w in parameters]
        self.load_global(parameters)
        t = self.cfg.train
        regularizer = None
        mu = float(config.get(protocol.PROXIMAL_MU, 0.0))
        if mu > 0:
            regularizer = proximal_term([p for p in self.model.parameters()], mu)
        loss = train_epochs(self.model, self.split.train, epochs=t.local_epochs, lr=t.lr, batch_size=t.batch_size,
                            device=self.device, seed=self.seed + algo_round, momentum=t.momentum,
                            weight_decay=t.weight_decay, regularizer=regularizer, augment=t.augment)
        metrics = self.personalize(global_weights, algo_round, int(config[protocol.TOTAL_ROUNDS]))
        weights, private = self.private_update(get_weights(self.model), global_weights, algo_round)
        compute = {protocol.COMPUTE_SECONDS: time.perf_counter() - started}
        weights, num_examples = faults.inject(self.cfg, self.partition_id, algo_round, weights,
                                              len(self.split.train), global_weights)
        return weights, num_examples, {**self.identity(), "train_loss": loss, **metrics, **private, **compute}

    def private_update(self, weights: NDArrays, global_weights: NDArrays,
                       algo_round: int) -> tuple[NDArrays, dict[str, Scalar]]:
        """The weights to upload: with local DP on their update when privacy.noise-multiplier > 0 and the algorithm
        uploads (warmfed_flwr/trust/dp.py), then with the ``dp_clipped`` metric; else ``weights`` unchanged."""
        privacy = self.cfg.privacy
        if not privacy.noise_multiplier or not key_is_used(self.cfg, "privacy.noise-multiplier"):
            return weights, {}
        private, clipped = dp.privatize_update(weights, global_weights, list(self.model.state_dict()),
                                               privacy.clip_norm, privacy.noise_multiplier,
                                               dp.round_rng(self.noise_secret(), algo_round))
        return private, {dp.CLIPPED_METRIC: int(clipped)}

    def noise_secret(self) -> int:
        """This client's DP noise secret: the node config's ``dp-secret`` (an integer, for reproducible runs), else
        one drawn from the OS once and kept in the client state (and its resume snapshots)."""
        given = self.context.node_config.get(DP_SECRET)
        if given is not None:
            return int(given)
        kept = load_arrays(self.context, DP_SECRET)
        if kept is None:
            kept = {DP_SECRET: np.array([secrets.randbits(63)], dtype=np.int64)}
            save_arrays(self.context, DP_SECRET, kept)
        return int(kept[DP_SECRET][0])

    def identity(self) -> dict[str, Scalar]:
        """Metrics that name this client."""
        return {protocol.CLIENT_NAME: self.split.name}

    def load_global(self, weights: NDArrays) -> None:
        """Load the received global weights (FedBN keeps the client's own BatchNorm layers)."""
        set_weights(self.model, weights)
        if self.cfg.personalization.method == "fedbn":
            local = load_arrays(self.context, LOCAL_BN)
            if local is not None:
                personalization.merge_fedbn(self.model, self.model.state_dict(),
                                            {k: torch.from_numpy(v) for k, v in local.items()})

    def personalize(self, global_weights: NDArrays, algo_round: int, total_rounds: int) -> dict[str, Scalar]:
        """Train the personalized model of this round and keep it in state (never uploaded)."""
        method = self.cfg.personalization.method
        if method == "none":
            return {}
        if method == "fedbn":
            state = self.model.state_dict()
            save_arrays(self.context, LOCAL_BN, {k: state[k].cpu().numpy()
                                                 for k in personalization.fedbn_local_keys(self.model)})
            self.save_personal(get_weights(self.model))
            return {}
        student = build_model(self.cfg.model, len(self.class_names))
        t, p = self.cfg.train, self.cfg.personalization
        carried = method == "ditto" or (method in ("dsd", "pfedsd") and p.student_start == "personal")
        previous = load_arrays(self.context, PERSONAL) if carried else None
        set_weights(student, payload.named_to_weights(previous) if previous else global_weights)
        kwargs = {"lr": t.lr, "batch_size": t.batch_size, "device": self.device, "seed": self.seed + algo_round}
        metrics: dict[str, float] = {}
        if method == "ditto":
            anchor = build_model(self.cfg.model, len(self.class_names))
            set_weights(anchor, global_weights)
            metrics = personalization.train_ditto(student, list(anchor.parameters()), self.split.train, p, **kwargs)
        elif method == "finetune":
            metrics = personalization.train_finetune(student, self.split.train, p, **kwargs)
        else:
            pool = self_distillation.LogitPool.from_arrays(load_arrays(self.context, POOL) or {})
            if method == "dsd":
                pool, metrics = self_distillation.train_dsd(student, self.split.train, pool, algo_round, total_rounds,
                                                          p, **kwargs)
            else:
                pool, metrics = self_distillation.train_pfedsd(student, self.split.train, pool, p, **kwargs)
            save_arrays(self.context, POOL, pool.to_arrays())
        self.save_personal(get_weights(student))
        return {k: float(v) for k, v in metrics.items()}

    def save_personal(self, weights: NDArrays) -> None:
        """Keep the personalized model for evaluation in every later round."""
        save_arrays(self.context, PERSONAL, payload.weights_to_named(weights))

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Global model on the client's test split, and its personalized model when it has one."""
        started = time.perf_counter()
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.split.test, self.device)
        metrics: dict[str, Scalar] = {**self.identity(), "global_acc": accuracy, "global_loss": loss}
        personal = load_arrays(self.context, PERSONAL)
        if personal is not None:
            set_weights(self.model, payload.named_to_weights(personal))
            metrics["personal_acc"] = evaluate(self.model, self.split.test, self.device)[1]
        metrics[protocol.COMPUTE_SECONDS] = time.perf_counter() - started
        return loss, len(self.split.test), metrics


class LocalOnlyClient(FederatedClient):
    """No federation: trains its own model from its previous state and ignores the server's weights."""

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Continue training the client's own model."""
        own = load_arrays(self.context, PERSONAL)
        weights = payload.named_to_weights(own) if own else parameters
        result = super().fit(weights, config)
        self.save_personal(get_weights(self.model))
        return result

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        """Only the client's own model: there is no global model."""
        started = time.perf_counter()
        own = load_arrays(self.context, PERSONAL)
        set_weights(self.model, payload.named_to_weights(own) if own else parameters)
        loss, accuracy = evaluate(self.model, self.split.test, self.device)
        return loss, len(self.split.test), {**self.identity(), "personal_acc": accuracy,
                                            protocol.COMPUTE_SECONDS: time.perf_counter() - started}
