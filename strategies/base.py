"""FedAvg that records communication, client failures and every client's evaluation metrics (the records:
strategies/reports.py), and aggregates by train.aggregation, train.example-weighting and train.clip-norm
(strategies/robust.py)."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
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
from flwr.server.strategy import FedAvg

from strategies import robust
from strategies.availability import ClientWait, missing_clients
from strategies.reports import client_compute_record, evaluation_record, fit_record, one_line, parameters_bytes
from strategies.sampling import sample_round
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.records.progress import Heartbeat
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.runtime import one_line_errors
from warmfed_flwr.trust.identity import claim_refusal, load_identities
from warmfed_flwr.wire import payload, protocol
from warmfed_flwr.wire.updates import scale_update, update_norm

logger = logging.getLogger(__name__)

Failures = list[tuple[ClientProxy, FitRes] | BaseException]


class Upload(NamedTuple):
    """A client's fit result that passed validation, with what it decoded to."""

    proxy: ClientProxy
    res: FitRes
    client: str
    content: Any


class RecordingFedAvg(FedAvg):
    """FedAvg plus per-round records: bytes up/down per client, failures, global and personal accuracy."""

    first_round = 1
    """The algorithm round of Flower's server round 1 (0 for warm-start algorithms)."""

    def __init__(self, cfg: ExperimentConfig, recorder: RunRecorder, num_rounds: int, **kwargs: Any) -> None:
        super().__init__(
            fraction_fit=cfg.train.fraction_fit,
            fraction_evaluate=1.0,
            min_fit_clients=cfg.train.min_fit_clients,
            min_evaluate_clients=cfg.train.min_fit_clients,
            min_available_clients=cfg.data.num_clients,
            accept_failures=True,
            **kwargs,
        )
        self.cfg = cfg
        self.recorder = recorder
        self.num_rounds = num_rounds
        self.fit_wait, self.eval_wait = Heartbeat(), Heartbeat()  # the waits on client replies, logged as they last
        self.global_weights: list[np.ndarray] = []
        """The global model sent in the current round: what clients' updates are measured (and clipped) against."""
        self.global_schema: list[tuple[tuple[int, ...], str]] = []
        self.sampled: list[str] = []
        self.client_names: dict[str, str] = {}
        """Client name by node id (cid), as each node last used it in an accepted claim."""
        self.identities = load_identities(cfg.train.identity_file)
        """train.identity-file: the node id (cid) each client name is bound to; empty: any node may claim any name."""
        self.client_wait = ClientWait(cfg.data.num_clients, cfg.train.min_fit_clients, cfg.train.round_timeout or None)

    def algorithm_round(self, server_round: int) -> int:
        """The algorithm's round number for a Flower server round."""
        return server_round - 1 + self.first_round

    def checkpoint_state(self) -> dict[str, Any]:
        """JSON state a checkpoint keeps besides the global model (none for stateless algorithms)."""
        return {}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`checkpoint_state` of a resumed run."""

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Config sent with every FitIns of ``server_round``."""
        last = self.algorithm_round(self.num_rounds)
        return {protocol.STAGE: protocol.STAGE_TRAIN, protocol.ROUND: self.algorithm_round(server_round),
                protocol.TOTAL_ROUNDS: last}

    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        """FedAvg's sample size; no wait in ClientManager.sample: :meth:`await_clients` has waited already."""
        return super().num_fit_clients(num_available_clients)[0], 0

    def num_evaluation_clients(self, num_available_clients: int) -> tuple[int, int]:
        """FedAvg's sample size; no wait in ClientManager.sample: :meth:`await_clients` has waited already."""
        return super().num_evaluation_clients(num_available_clients)[0], 0

    @one_line_errors
    def await_clients(self, server_round: int, client_manager: ClientManager, stage: str) -> None:
        """Wait at most train.round-timeout for the expected clients to connect; a ``clients_missing`` event names
        those still missing, and fewer than train.min-fit-clients stop the run."""
        algo_round = self.algorithm_round(server_round)
        expected = self.client_wait.expected
        available = self.client_wait.wait(client_manager)
        if available < expected:
            self.recorder.event("clients_missing", round=algo_round, stage=stage, missing=expected - available,
                                available=available,
                                clients=missing_clients(client_manager.all(), self.client_names, self.identities),
                                reason=f"{available} of {expected} clients connected after waiting up to "
                                       f"train.round-timeout = {self.cfg.train.round_timeout:g} s")
            self.recorder.flush()
        self.client_wait.settle(available, f"round {algo_round} ({stage})")

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Wait for the clients (:meth:`await_clients`), sample them (strategies/sampling.py), count the bytes sent."""
        self.await_clients(server_round, client_manager, "training")
        available = client_manager.all()
        clients = sample_round(available, self.num_fit_clients(len(available))[0], self.cfg.seed,
                               self.algorithm_round(server_round), self.cfg.train.round_timeout or None)
        self.global_weights = parameters_to_ndarrays(parameters)
        self.global_schema = payload.weights_schema(self.global_weights)
        self.sampled = [client.cid for client in clients]
        pairs = [(client, FitIns(parameters, self.fit_config(server_round))) for client in clients]
        down = [parameters_bytes(ins.parameters) for _, ins in pairs]
        self.recorder.record_round(self.algorithm_round(server_round), {
            "clients_sampled": len(pairs),
            "bytes_down": sum(down),
            "bytes_down_per_client": max(down, default=0),
        })
        self.fit_wait.start(f"round {self.algorithm_round(server_round)}: waiting for {len(pairs)} client(s) to train")
        return pairs

    def check_upload(self, server_round: int, client: str, res: FitRes) -> Any:
        """Decode and validate one upload against the global model it trained from; raise to refuse it."""
        weights = parameters_to_ndarrays(res.parameters)
        payload.validate_weights(weights, self.global_schema, client)
        payload.validate_num_examples(res.num_examples, self.cfg.train.max_client_examples, client)
        return weights

    def screen_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> list[Upload]:
        """The uploads that pass :meth:`check_upload`, in client-name order so that the float sums of the average and
        of the recorded metrics do not depend on which client answered first; the others are refused with a recorded
        reason. Records the round's fit metrics and failures."""
        algo_round = self.algorithm_round(server_round)
        accepted: list[Upload] = []
        for proxy, res in results:
            client = str(res.metrics.get(protocol.CLIENT_NAME, proxy.cid))
            if refusal := claim_refusal(self.identities, client, proxy.cid):
                self.recorder.event("upload_refused", round=algo_round, client=f"node {proxy.cid}", claimed=client,
                                    reason=refusal)
                continue
            self.client_names[proxy.cid] = client
            try:
                if any(upload.client == client for upload in accepted):
                    raise ValueError(f"a second upload claims to come from client '{client}'")
                accepted.append(Upload(proxy, res, client, self.check_upload(server_round, client, res)))
            except Exception as exc:  # noqa: BLE001 - a bad upload is refused, never fatal
                self.recorder.event("upload_refused", round=algo_round, client=client, reason=one_line(exc))
        accepted.sort(key=lambda upload: upload.client)
        self.record_failures(algo_round, results, failures)
        self.record_fit(server_round, accepted, results, len(failures))
        return accepted

    def record_failures(self, algo_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures) -> None:
        """One ``client_failed`` event per failure, naming the sampled clients that sent nothing."""
        answered = {proxy.cid for proxy, _ in results}
        silent = [self.client_names.get(cid, f"node {cid}") for cid in self.sampled if cid not in answered]
        for failure in failures:
            reason = failure if isinstance(failure, BaseException) else failure[1].status.message
            blame = {"client": silent[0]} if len(failures) == len(silent) == 1 else {"clients": silent}
            self.recorder.event("client_failed", round=algo_round, **blame, reason=one_line(reason))

    def record_fit(self, server_round: int, accepted: list[Upload], results: list[tuple[ClientProxy, FitRes]],
                   failed: int) -> None:
        """Record client counts, bytes up and fit metrics of a round (:func:`reports.fit_record`)."""
        self.recorder.record_round(self.algorithm_round(server_round),
                                   fit_record([upload.res for upload in accepted], results, failed))

    def enough_uploads(self, server_round: int, accepted: list[Upload]) -> bool:
        """Whether ``accepted`` reaches train.min-fit-clients; if not, record that the round keeps the previous
        global model."""
        if len(accepted) >= self.min_fit_clients:
            return True
        reason = (f"{len(accepted)} valid upload(s), fewer than train.min-fit-clients = {self.min_fit_clients}; "
                  "the previous global model is kept")
        self.recorder.event("round_skipped", round=self.algorithm_round(server_round), reason=reason)
        self.recorder.record_round(self.algorithm_round(server_round), {"model_kept": True})
        return False

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The valid client weights, clipped and aggregated (:meth:`aggregate_uploads`); the previous model when too few
        are valid."""
        self.recorder.add_time("client_rounds", self.fit_wait.stop())
        accepted = self.screen_fit(server_round, results, failures)
        if not self.enough_uploads(server_round, accepted):
            return None, {}
        return self.aggregate_uploads(server_round, self.clip_updates(server_round, accepted))

    def clip_updates(self, server_round: int, accepted: list[Upload]) -> list[Upload]:
        """``accepted`` with every update (weights minus the global model sent) longer than train.clip-norm scaled
        down to it, each with an ``update_clipped`` event naming the client and its norm; unchanged when it is 0."""
        max_norm = self.cfg.train.clip_norm
        if not max_norm:
            return accepted
        algo_round = self.algorithm_round(server_round)
        out: list[Upload] = []
        clipped_clients = 0
        for upload in accepted:
            norm = update_norm(upload.content, self.global_weights)
            if norm > max_norm:
                clipped = scale_update(upload.content, self.global_weights, max_norm / norm)
                self.recorder.event("update_clipped", round=algo_round, client=upload.client, norm=norm,
                                    clip_norm=max_norm)
                res = FitRes(upload.res.status, ndarrays_to_parameters(clipped), upload.res.num_examples,
                             upload.res.metrics)
                upload = upload._replace(res=res, content=clipped)
                clipped_clients += 1
            out.append(upload)
        self.recorder.record_round(algo_round, {"clients_clipped": clipped_clients})
        return out

    def aggregate_uploads(self, server_round: int, uploads: list[Upload]) -> tuple[Parameters, dict[str, Scalar]]:
        """The new global model from the uploads' weights by train.aggregation (:func:`robust.combine`), recorded
        with the largest client share of the mean or the clients the trimmed mean cuts per side."""
        train = self.cfg.train
        counts = [int(upload.res.num_examples) for upload in uploads]
        combined = robust.combine([upload.content for upload in uploads], counts, train)
        self.recorder.record_round(self.algorithm_round(server_round), robust.aggregation_record(counts, train))
        return ndarrays_to_parameters(combined), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Evaluate on every connected client (:meth:`await_clients`), sampled for training or not."""
        self.await_clients(server_round, client_manager, "evaluation")
        algo_round = self.algorithm_round(server_round)
        config = {protocol.ROUND: algo_round}
        pairs = [(client, EvaluateIns(ins.parameters, {**ins.config, **config}))
                 for client, ins in super().configure_evaluate(server_round, parameters, client_manager)]
        self.eval_wait.start(f"round {algo_round}: waiting for {len(pairs)} client(s) to evaluate")
        return pairs

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: Failures
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Record per-domain and pooled global accuracy, and personalized accuracy over clients, in the run record."""
        self.recorder.add_time("evaluation", self.eval_wait.stop())
        algo_round = self.algorithm_round(server_round)
        valid = self.screen_evaluate(algo_round, results)
        per_domain = self.cfg.data.clients_per_domain if self.cfg.data.partition == "domain" else 1
        record = {**evaluation_record(valid, per_domain), **client_compute_record(valid, "client_eval_compute_seconds"),
                  "clients_evaluated": len(valid),
                  "clients_eval_failed": len(failures),
                  "clients_eval_refused": len(results) - len(valid)}
        self.recorder.record_round(algo_round, record)
        if server_round == self.num_rounds:
            logger.info("results written to %s\n%s", self.recorder.directory, self.recorder.finish())
        return None, {}  # recorded by algorithm round; Flower's summary would list them again by its server round

    def screen_evaluate(
        self, algo_round: int, results: list[tuple[ClientProxy, EvaluateRes]]
    ) -> list[tuple[ClientProxy, EvaluateRes]]:
        """The evaluation reports that pass :func:`payload.validate_evaluation`, one per client name, in client-name
        order (the pooled sums do not depend on arrival order); the others are refused with a recorded
        ``eval_refused`` event."""
        valid: list[tuple[ClientProxy, EvaluateRes]] = []
        names: set[str] = set()
        for proxy, res in results:
            sender = self.client_names.get(proxy.cid, f"node {proxy.cid}")
            try:
                name = payload.validate_evaluation(res.metrics, res.num_examples, self.cfg.train.max_client_examples,
                                                   sender)
                if refusal := claim_refusal(self.identities, name, proxy.cid):
                    self.recorder.event("eval_refused", round=algo_round, client=f"node {proxy.cid}", claimed=name,
                                        reason=refusal)
                    continue
                if name in names:
                    raise ValueError(f"a second evaluation claims to come from client '{name}'")
            except Exception as exc:  # noqa: BLE001 - a bad report is refused, never fatal
                self.recorder.event("eval_refused", round=algo_round, client=sender, reason=one_line(exc))
                continue
            names.add(name)
            self.client_names[proxy.cid] = name
            valid.append((proxy, res))
        return sorted(valid, key=lambda pair: self.client_names[pair[0].cid])
