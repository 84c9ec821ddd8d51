"""Checkpoint and resume for any recording strategy: save after every round, skip the rounds a resumed run did."""

from __future__ import annotations

from typing import TypeVar

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from strategies.base import Failures, RecordingFedAvg
from warmfed_flwr.records.checkpoint import Checkpoint, CheckpointStore, RandomState, checkpoint_dir
from warmfed_flwr.wire import protocol

Ins = TypeVar("Ins", FitIns, EvaluateIns)


class CheckpointingStrategy(Strategy):
    """Runs ``inner``, saving a checkpoint once each round's evaluation is recorded.

    Resumed from ``checkpoint``, it starts from the checkpoint's global model, asks no client anything in the
    server rounds the checkpoint already covers, and names the checkpoint's algorithm round in every later instruction
    (``protocol.RESUME_FROM``) so that each client restores its own state as of that round.
    """

    def __init__(self, inner: RecordingFedAvg, store: CheckpointStore, checkpoint: Checkpoint | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.store = store
        self.checkpoint = checkpoint
        self.rounds_done = checkpoint.server_round if checkpoint else 0
        self._evaluated: Parameters | None = None

    def __repr__(self) -> str:
        return f"CheckpointingStrategy({self.inner!r}, rounds done: {self.rounds_done})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The checkpoint's global model when resumed, else the inner strategy's initial model."""
        if self.checkpoint is not None:
            return ndarrays_to_parameters(self.checkpoint.weights)
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Nothing for a round the checkpoint covers; the inner strategy's instructions otherwise."""
        if server_round <= self.rounds_done:
            return []
        return self.name_resume_round(self.inner.configure_fit(server_round, parameters, client_manager))

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The inner strategy's aggregate."""
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Remember the round's global model for its checkpoint; skip a round the checkpoint covers."""
        if server_round <= self.rounds_done:
            return []
        self._evaluated = parameters
        return self.name_resume_round(self.inner.configure_evaluate(server_round, parameters, client_manager))

    def name_resume_round(self, instructions: list[tuple[ClientProxy, Ins]]) -> list[tuple[ClientProxy, Ins]]:
        """Add the checkpoint's algorithm round to every instruction of a resumed run (a fresh run's are unchanged)."""
        if self.checkpoint is not None:
            for _, ins in instructions:
                ins.config[protocol.RESUME_FROM] = self.checkpoint.algorithm_round
        return instructions

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: Failures
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Record the round through the inner strategy, then checkpoint it."""
        aggregated = self.inner.aggregate_evaluate(server_round, results, failures)
        if self._evaluated is not None:
            self.store.save(Checkpoint(
                server_round=server_round,
                algorithm_round=self.inner.algorithm_round(server_round),
                weights=parameters_to_ndarrays(self._evaluated),
                strategy_state=self.inner.checkpoint_state(),
                history=self.inner.recorder.history(),
                random_state=RandomState.capture(),
            ))
        return aggregated

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """The inner strategy's server-side evaluation."""
        return self.inner.evaluate(server_round, parameters)


def with_checkpoints(strategy: RecordingFedAvg, resume: bool) -> CheckpointingStrategy:
    """Wrap ``strategy`` to checkpoint its run directory; with ``resume``, continue from the newest checkpoint there.

    A fresh run removes checkpoints an earlier run of the same name left, so it never resumes from them later.
    """
    store = CheckpointStore(checkpoint_dir(strategy.recorder.directory))
    if not resume:
        store.clear()
        return CheckpointingStrategy(strategy, store)
    checkpoint = store.load_newest()
    strategy.recorder.restore(checkpoint.history)
    strategy.restore_checkpoint_state(checkpoint.strategy_state)
    strategy.recorder.event("resumed", after_round=checkpoint.algorithm_round)
    checkpoint.random_state.restore()
    return CheckpointingStrategy(strategy, store, checkpoint)
