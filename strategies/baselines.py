"""Classic baselines as thin strategies: FedAvg, FedProx, local-only and centralized."""

from __future__ import annotations

from typing import Any

from flwr.common import EvaluateIns, FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import ClientManager
from flwr.server.client_proxy import ClientProxy

from strategies.base import Failures, RecordingFedAvg
from warmfed_flwr.methods.centralized import CentralizedTrainer
from warmfed_flwr.wire import protocol


class FedAvgStrategy(RecordingFedAvg):
    """FedAvg (McMahan et al., 2017), weighted by client example counts."""


class FedProxStrategy(RecordingFedAvg):
    """FedProx (Li et al., 2020): FedAvg with a proximal term mu on the clients."""

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Round config plus the proximal factor."""
        return {**super().fit_config(server_round), protocol.PROXIMAL_MU: self.cfg.train.proximal_mu}


class LocalOnlyStrategy(RecordingFedAvg):
    """No federation: clients train their own models; the server never aggregates."""

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Record the round and keep the server's parameters unchanged."""
        self.recorder.add_time("client_rounds", self.fit_wait.stop())
        self.screen_fit(server_round, results, failures)
        return None, {}


class CentralizedStrategy(RecordingFedAvg):
    """The upper reference: the server trains on every client's pooled train data; clients only evaluate."""

    def __init__(self, *args: Any, trainer: CentralizedTrainer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer = trainer

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Train one round on pooled data on the server; no client trains."""
        algo_round = self.algorithm_round(server_round)
        with self.recorder.timed("centralized_training", f"round {algo_round}: centralized training"):
            self.trainer.train_round(server_round)
        self.recorder.record_round(self.algorithm_round(server_round), {"bytes_down": 0, "bytes_up": 0})
        return []

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Evaluate the centrally trained weights on every client."""
        trained = ndarrays_to_parameters(self.trainer.weights())
        return super().configure_evaluate(server_round, trained, client_manager)
