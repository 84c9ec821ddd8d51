"""WarmFed (arXiv 2503.03110) on Flower: round 0 warm start from client adapters, then globalization.

FGL (arXiv 2306.16064) is the same strategy with LoRA off and client synthetic fine-tuning off.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from strategies.base import Failures, RecordingFedAvg, decode_results
from warmfed_flwr import payload, protocol
from warmfed_flwr.warmstart import WarmStartServer


class WarmFedStrategy(RecordingFedAvg):
    """Round 0 collects adapters and prompt embeddings, synthesizes and trains the one-shot model;
    later rounds send the global model (and the synthetic subset once), average and fine-tune."""

    first_round = 0

    def __init__(self, *args: Any, server: WarmStartServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.max_upload_bytes = int(self.cfg.synthesis.max_upload_mb * 2**20)
        self.has_subset: set[str] = set()

    def checkpoint_state(self) -> dict[str, Any]:
        """The synthetic set's cache keys and the subset: the subset is sent again after a resume."""
        return self.server.checkpoint_state()

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Reload the synthetic set from the cache; clients get the subset again in their next round."""
        self.server.restore_checkpoint_state(state)

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Warm-up in round 0, globalization afterwards."""
        stage = protocol.STAGE_WARMUP if server_round == 1 else protocol.STAGE_GLOBALIZE
        return {**super().fit_config(server_round), protocol.STAGE: stage}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Round 0 asks every client; later rounds sample and send weights (+ the subset once) as a bundle."""
        if server_round == 1:
            return self._configure_warmup(server_round, client_manager)
        pairs = super().configure_fit(server_round, parameters, client_manager)
        model = payload.with_prefix(payload.weights_to_named(parameters_to_ndarrays(parameters)),
                                    protocol.MODEL_PREFIX)
        subset = self.server.subset_arrays() if self.cfg.warmfed.client_syn_finetune else {}
        with_subset = ndarrays_to_parameters(payload.encode({**model, **subset}))
        without_subset = ndarrays_to_parameters(payload.encode(model))
        out = []
        for client, ins in pairs:
            first_time = client.cid not in self.has_subset
            self.has_subset.add(client.cid)
            out.append((client, FitIns(with_subset if first_time else without_subset, ins.config)))
        down = [sum(len(t) for t in ins.parameters.tensors) for _, ins in out]
        self.recorder.record_round(self.algorithm_round(server_round),
                                   {"bytes_down": sum(down), "bytes_down_per_client": max(down, default=0)})
        return out

    def _configure_warmup(self, server_round: int, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        client_manager.wait_for(self.min_available_clients)
        clients = client_manager.sample(num_clients=client_manager.num_available(),
                                        min_num_clients=self.min_available_clients)
        empty = ndarrays_to_parameters(payload.encode({}))
        self.recorder.record_round(0, {"clients_sampled": len(clients), "bytes_down": 0, "bytes_down_per_client": 0})
        self._fit_started = time.perf_counter()
        return [(client, FitIns(empty, self.fit_config(server_round))) for client in clients]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Round 0: warm start from the valid uploads. Later: FedAvg, then server fine-tuning."""
        stage = "client_lora" if server_round == 1 else "client_rounds"
        self.recorder.add_time(stage, time.perf_counter() - self._fit_started)
        self.record_fit(server_round, results, failures)
        if server_round == 1:
            return self._warm_start(results)
        aggregated, metrics = super(RecordingFedAvg, self).aggregate_fit(server_round, results, failures)
        if aggregated is None:
            return None, metrics
        started = time.perf_counter()
        weights = self.server.finetune(parameters_to_ndarrays(aggregated), self.algorithm_round(server_round))
        self.recorder.add_time("server_finetune", time.perf_counter() - started)
        return ndarrays_to_parameters(weights), metrics

    def _warm_start(self, results: list[tuple[ClientProxy, FitRes]]) -> tuple[Parameters | None, dict[str, Scalar]]:
        schema = self.server.upload_schema()
        accepted = []
        for client, named, _res in decode_results(results, self.recorder, 0):
            try:
                payload.validate(named, schema, client, self.max_upload_bytes)
            except Exception as exc:  # noqa: BLE001 - a bad upload is left out, the round goes on
                self.recorder.event("upload_refused", round=0, client=client, reason=str(exc))
                continue
            accepted.append((client, named))
        if not accepted:
            raise RuntimeError("no valid round-0 upload: every client failed or was refused; see the events above")
        started = time.perf_counter()
        synthetic = self.server.build_synthetic(sorted(accepted))
        self.recorder.add_time("synthesis", time.perf_counter() - started)
        started = time.perf_counter()
        weights = self.server.train_warm_start()
        self.recorder.add_time("warm_start_training", time.perf_counter() - started)
        self.recorder.record_round(0, {
            "clients_accepted": len(accepted),
            "synthetic_images": len(synthetic.labels),
            "synthetic_subset": len(self.server.subset) if self.server.subset is not None else 0,
            "classifier_bytes": payload.nbytes(weights),
        })
        return ndarrays_to_parameters(weights), {}
