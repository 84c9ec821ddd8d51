"""WarmFed (arXiv 2503.03110) on Flower: round 0 warm start from client adapters, then globalization.

FGL (arXiv 2306.16064) is this strategy run with config.loading.FGL_DIFFERENCES (LoRA off, client synthetic
fine-tuning off), which resolve() applies for algorithm = fgl.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager
from flwr.server.client_proxy import ClientProxy
from torch.utils.data import Dataset

from strategies.base import Failures, RecordingFedAvg, Upload
from strategies.sampling import sampling_names, seeded_sample
from warmfed_flwr.errors import FederationError, PayloadError
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.methods.round0_upload import round0_sample_size
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.records.results import PRIVACY_AUDIT_PREFIX, SYNTHETIC_QUALITY_PREFIX
from warmfed_flwr.runtime import one_line_errors
from warmfed_flwr.trust.embedding_classes import validate_embedding_classes
from warmfed_flwr.wire import payload, protocol

logger = logging.getLogger(__name__)


class WarmFedStrategy(RecordingFedAvg):
    """Round 0 collects adapters and prompt embeddings, synthesizes and trains the one-shot model;
    later rounds send the global model (and the synthetic subset once), average and fine-tune."""

    first_round = 0

    def __init__(self, *args: Any, warm_start: SyntheticWarmStart, domains: Sequence[str] = (),
                 quality_tests: dict[str, Dataset] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warm_start = warm_start
        self.quality_tests = quality_tests or {}
        """Real test splits by client name, to score each client's synthetic images (a simulation diagnostic)."""
        self.domains = list(domains)
        """The client names expected in round 0 (the benchmark's domains); empty: any name is taken."""
        self.max_upload_bytes = int(self.cfg.synthesis.max_upload_mb * 2**20)
        """Round-0 size limit: the hard cap until ``round_zero_schema`` derives it from the expected upload."""
        self.has_subset: set[str] = set()
        self.uploaders: dict[str, str] = {}
        """Node id -> client name of every accepted round-0 upload: whose synthetic images a node's audit gets."""
        self.upload_schema: payload.Schema = {}
        self.embedding_norm_bound: float | None = None
        """Round-0 limit on a prompt-embedding token vector's L2 norm (:meth:`embedding_norm_limit`)."""
        self.reference_embeddings: np.ndarray | None = None
        """The server's own embeddings of the class prompts (:meth:`class_prompt_embeddings`)."""
        self.round0_asked = self.round0_available = 0

    def checkpoint_state(self) -> dict[str, Any]:
        """The synthetic set's cache keys and the subset: the subset is sent again after a resume."""
        return self.warm_start.checkpoint_state()

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Reload the synthetic set from the cache; clients get the subset again in their next round."""
        self.warm_start.restore_checkpoint_state(state)

    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """Round-0 upload in round 0, globalization afterwards."""
        stage = protocol.STAGE_ROUND0_UPLOAD if server_round == 1 else protocol.STAGE_GLOBALIZE
        return {**super().fit_config(server_round), protocol.STAGE: stage}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Round 0 asks a seeded sample (warmfed.round0-fraction) of the clients; later rounds sample and send weights
        (+ the subset and its privacy-audit sample, to each client in its first globalization round) as a bundle."""
        if server_round == 1:
            return self._configure_round0_upload(server_round, client_manager)
        pairs = super().configure_fit(server_round, parameters, client_manager)
        model = payload.with_prefix(payload.weights_to_named(parameters_to_ndarrays(parameters)),
                                    protocol.MODEL_PREFIX)
        subset = self.warm_start.subset_arrays() if self.cfg.warmfed.client_syn_finetune else {}
        with_subset = ndarrays_to_parameters(payload.encode({**model, **subset}))
        without_subset = ndarrays_to_parameters(payload.encode(model))
        out = []
        for client, ins in pairs:
            first_time = client.cid not in self.has_subset
            self.has_subset.add(client.cid)
            audit = self.audit_arrays(client.cid) if first_time else {}
            if audit:
                bundle = ndarrays_to_parameters(payload.encode({**model, **subset, **audit}))
            else:
                bundle = with_subset if first_time else without_subset
            out.append((client, FitIns(bundle, ins.config)))
        down = [sum(len(t) for t in ins.parameters.tensors) for _, ins in out]
        self.recorder.record_round(self.algorithm_round(server_round),
                                   {"bytes_down": sum(down), "bytes_down_per_client": max(down, default=0)})
        return out

    def audit_arrays(self, cid: str) -> dict[str, np.ndarray]:
        """The privacy-audit sample (privacy.audit-images) of the synthetic images made from node ``cid``'s own
        round-0 upload; empty when it is off or this server saw no accepted upload from the node (not asked in round
        0, refused, or a run resumed after round 0)."""
        name = self.uploaders.get(cid)
        return self.warm_start.audit_arrays(name, self.cfg.privacy.audit_images) if name is not None else {}

    def record_audits(self, accepted: list[Upload]) -> None:
        """Keep each accepted client's reported privacy-audit metrics (finite numbers only) in the run record."""
        for upload in accepted:
            audit = {key: float(value) for key, value in upload.res.metrics.items()
                     if key.startswith(PRIVACY_AUDIT_PREFIX) and isinstance(value, (int, float))
                     and not isinstance(value, bool) and math.isfinite(value)}
            if audit:
                self.recorder.record_privacy_audit(upload.client, audit)

    def round_zero_schema(self) -> payload.Schema:
        """The upload schema the server expects in round 0, and the size limit derived from it (set once)."""
        if not self.upload_schema:
            self.upload_schema = self.warm_start.upload_schema()
            self.max_upload_bytes = payload.upload_limit(self.upload_schema,
                                                         int(self.cfg.synthesis.max_upload_mb * 2**20))
        return self.upload_schema

    def _configure_round0_upload(
        self, server_round: int, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.round_zero_schema()
        self.await_clients(server_round, client_manager, "round-0 upload")
        available = client_manager.all()
        asked = round0_sample_size(len(available), self.cfg.warmfed.round0_fraction, self.min_fit_clients)
        names = sampling_names(available, asked, self.cfg.train.round_timeout or None)
        chosen = seeded_sample(names, asked, self.cfg.seed, 0)
        clients = [available[cid] for cid in chosen]
        self.round0_asked, self.round0_available = asked, len(available)
        if asked < len(available):
            self.recorder.event("clients_not_sampled", round=0,
                                clients=sorted(name for cid, name in names.items() if cid not in chosen),
                                reason=f"{self.round0_sample_note()}; they join at round 1")
        empty = ndarrays_to_parameters(payload.encode({}))
        self.recorder.record_round(0, {"clients_sampled": len(clients), "bytes_down": 0, "bytes_down_per_client": 0})
        self.sampled = [client.cid for client in clients]
        self.fit_wait.start(f"round 0: waiting for {len(clients)} client(s) to fine-tune their LoRA adapters")
        return [(client, FitIns(empty, self.fit_config(server_round))) for client in clients]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Round 0: warm start from the valid uploads. Later: clipped and aggregated as the base strategy does (the
        ensemble target sees the clipped uploads), then server fine-tuning."""
        stage = "client_lora" if server_round == 1 else "client_rounds"
        self.recorder.add_time(stage, self.fit_wait.stop())
        if server_round == 1:
            self.round_zero_schema()
        accepted = self.screen_fit(server_round, results, failures)
        if server_round == 1:
            return self._warm_start(accepted)
        self.record_audits(accepted)
        if not self.enough_uploads(server_round, accepted):
            return None, {}
        accepted = self.clip_updates(server_round, accepted)
        aggregated, metrics = self.aggregate_uploads(server_round, accepted)
        uploads = [parameters_to_ndarrays(upload.res.parameters) for upload in accepted]
        algo_round = self.algorithm_round(server_round)
        with self.recorder.timed("server_finetune", f"round {algo_round}: server fine-tuning"):
            weights = self.warm_start.finetune(parameters_to_ndarrays(aggregated), algo_round, uploads)
        return ndarrays_to_parameters(weights), metrics

    def check_upload(self, server_round: int, client: str, res: FitRes) -> Any:
        """Round 0: an expected client's bundle matching the upload schema; later rounds: new model weights."""
        if server_round != 1:
            return super().check_upload(server_round, client, res)
        if self.domains and client not in self.domains:
            raise PayloadError(f"upload names client '{client}', not one of {', '.join(self.domains)}")
        if client.startswith(".") or any(sep in client for sep in "/\\"):
            raise PayloadError(f"upload names client {client!r}, which is not usable as a file name")
        named = payload.decode(parameters_to_ndarrays(res.parameters), client)
        payload.validate(named, self.upload_schema, client, self.max_upload_bytes)
        payload.validate_num_examples(res.num_examples, self.cfg.train.max_client_examples, client)
        named = payload.cast_floats(named, "float32")
        syn = self.cfg.synthesis
        payload.validate_max_abs(named, protocol.ADAPTER_PREFIX, syn.max_adapter_abs, client,
                                 "synthesis.max-adapter-abs")
        if syn.max_embedding_norm_factor:
            why = (f"synthesis.max-embedding-norm-factor = {syn.max_embedding_norm_factor:g} x the largest row of the "
                   "server's own class-prompt embeddings")
            payload.validate_row_norms(named[protocol.EMBEDDINGS], protocol.EMBEDDINGS, self.embedding_norm_limit(),
                                       client, why)
        if syn.check_embedding_classes:
            validate_embedding_classes(named[protocol.EMBEDDINGS], self.class_prompt_embeddings(),
                                       self.warm_start.class_names, protocol.EMBEDDINGS, client)
        return named

    def class_prompt_embeddings(self) -> np.ndarray:
        """The server's own embeddings of the class prompts (without a domain phrase), computed once with its
        generator: the reference of the round-0 embedding norm bound and class check."""
        if self.reference_embeddings is None:
            prompts = class_prompts(self.cfg.generator.prompt_template, self.warm_start.class_names)
            self.reference_embeddings = prompt_embeddings(self.warm_start.generator(), prompts).numpy()
        return self.reference_embeddings

    def embedding_norm_limit(self) -> float:
        """synthesis.max-embedding-norm-factor x the largest token-vector L2 norm of the server's own embeddings of the
        class prompts (without a domain phrase), computed once with the server's generator."""
        if self.embedding_norm_bound is None:
            largest = np.linalg.norm(self.class_prompt_embeddings().astype(np.float64), axis=-1).max()
            self.embedding_norm_bound = self.cfg.synthesis.max_embedding_norm_factor * float(largest)
        return self.embedding_norm_bound

    def round0_sample_note(self) -> str:
        """How many clients round 0 asked, and why."""
        return (f"warmfed.round0-fraction = {self.cfg.warmfed.round0_fraction:g} asked {self.round0_asked} of "
                f"{self.round0_available} clients for a round-0 upload")

    def record_left_out(self, accepted: list[Upload]) -> None:
        """A ``domain_left_out`` event for every expected client without a valid round-0 upload, with the refusal,
        the round-0 sample that did not ask it or, when only one client sent nothing, the failure as its reason."""
        round_zero = [e for e in self.recorder.events if e.get("round") == 0]
        refused = {e["client"]: e["reason"] for e in round_zero if e["kind"] == "upload_refused"}
        failed = [e["reason"] for e in round_zero if e["kind"] == "client_failed"]
        sent = {upload.client for upload in accepted}
        silent = [domain for domain in self.domains if domain not in sent and domain not in refused]
        for domain in self.domains:
            if domain in refused:
                reason = f"upload refused: {refused[domain]}"
            elif domain not in silent:
                continue
            elif self.round0_asked < self.round0_available:
                reason = f"not sampled{' or failed' if failed else ''} ({self.round0_sample_note()})"
            else:
                reason = f"failed: {failed[0]}" if len(silent) == len(failed) == 1 else "no reply (failed or timed out)"
            self.recorder.event("domain_left_out", round=0, domain=domain, reason=reason)

    @one_line_errors
    def _warm_start(self, accepted: list[Upload]) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.record_left_out(accepted)
        self.uploaders = {upload.proxy.cid: upload.client for upload in accepted}
        if len(accepted) < self.min_fit_clients:
            raise FederationError(
                f"round 0 got {len(accepted)} valid upload(s) ({', '.join(u.client for u in accepted) or 'none'}), "
                f"fewer than train.min-fit-clients = {self.min_fit_clients}; the failures and refusals are the events "
                f"in {self.recorder.directory / 'metrics.json'}"
            )
        with self.recorder.timed("synthesis", "round 0: synthesis"):
            synthetic = self.warm_start.build_synthetic(sorted(((u.client, u.content) for u in accepted),
                                                               key=lambda u: u[0]))
            self.warm_start.release_generator()
        with self.recorder.timed("warm_start_training", "round 0: warm-start training"):
            weights = self.warm_start.train_warm_start()
        quality = {}
        if self.quality_tests:
            with self.recorder.timed("synthetic_quality", "round 0: synthetic-quality check"):
                quality = self.warm_start.synthetic_quality(self.quality_tests)
        self.recorder.record_round(0, {
            "clients_accepted": len(accepted),
            "synthetic_images": len(synthetic.labels),
            "synthetic_images_per_class": self.warm_start.images_per_class(len(accepted)),
            "synthetic_subset": len(self.warm_start.subset) if self.warm_start.subset is not None else 0,
            "classifier_bytes": payload.nbytes(weights),
            **{f"{SYNTHETIC_QUALITY_PREFIX}{client}": accuracy for client, accuracy in quality.items()},
        })
        return ndarrays_to_parameters(weights), {}
