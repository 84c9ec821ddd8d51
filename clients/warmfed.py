"""WarmFed/FGL client: round-0 upload (adapter + prompt embeddings), then globalization rounds."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.common import NDArrays, Scalar

from clients.base import FederatedClient
from clients.state import load_arrays, save_arrays
from warmfed_flwr.data import ImageArrayDataset
from warmfed_flwr.methods.round0_upload import client_upload, default_domain_phrase
from warmfed_flwr.methods.warmstart import globalize_client
from warmfed_flwr.trust import dp, faults
from warmfed_flwr.trust.privacy_audit import audit_metrics, penultimate_features, privacy_audit
from warmfed_flwr.wire import payload, protocol

SUBSET = "synthetic-subset"
logger = logging.getLogger(__name__)


class WarmFedClient(FederatedClient):
    """Round 0 uploads; later rounds fine-tune on the kept synthetic subset before private training."""

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Dispatch on the stage the server asked for."""
        if config[protocol.STAGE] == protocol.STAGE_ROUND0_UPLOAD:
            return self.round0_upload()
        named = payload.decode(parameters, sender="server")
        if protocol.SYNTHETIC_IMAGES in named:
            save_arrays(self.context, SUBSET, {k: named[k] for k in (protocol.SYNTHETIC_IMAGES,
                                                                     protocol.SYNTHETIC_LABELS)})
        global_weights = payload.named_to_weights(payload.split_prefix(named, protocol.MODEL_PREFIX))
        algo_round = int(config[protocol.ROUND])
        started = time.perf_counter()
        self.load_global(global_weights)
        audit = self.privacy_audit(named)
        loss = globalize_client(self.model, self.synthetic_subset(), self.split, self.cfg, self.device,
                                self.seed + algo_round)
        metrics = self.personalize(global_weights, algo_round, int(config[protocol.TOTAL_ROUNDS]))
        weights, private = self.private_update(self.get_parameters({}), global_weights, algo_round)
        compute = {protocol.COMPUTE_SECONDS: time.perf_counter() - started}
        weights, num_examples = faults.inject(self.cfg, self.partition_id, algo_round, weights,
                                              len(self.split.train), global_weights)
        return weights, num_examples, {**self.identity(), "train_loss": loss, **metrics, **audit, **private,
                                       **compute}

    def privacy_audit(self, named: dict[str, np.ndarray]) -> dict[str, Scalar]:
        """When the server sent synthetic images made from this client's own upload (once): their audit against the
        private train and test splits in pixels and in the received global model's penultimate features, as
        ``audit_*`` scalars (warmfed_flwr/trust/privacy_audit.py); the images and splits stay here. An audit that cannot
        run (images of another size, an empty split) is logged in one line and costs the round nothing."""
        if protocol.AUDIT_IMAGES not in named:
            return {}
        images = np.ascontiguousarray(named[protocol.AUDIT_IMAGES].transpose(0, 2, 3, 1))
        try:
            audits = privacy_audit(images, self.split.train, self.split.test, self.seed,
                                   penultimate_features(self.model, self.device))
        except ValueError as exc:
            logger.warning("privacy audit of %s skipped: %s", self.split.name, exc)
            return {}
        return dict(audit_metrics(audits))

    def round0_upload(self) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Round 0: LoRA-adapt the generator (when enabled) and send adapter and class prompt embeddings."""
        phrase = str(self.context.node_config.get("domain-phrase", "")) or self.default_domain_phrase()
        started = time.perf_counter()
        named, timings = client_upload(self.cfg, self.split, self.class_names, self.device, self.cache_dir, phrase)
        named, private = self.private_round0(named)
        metrics = {**self.identity(), protocol.CLASS_NAMES: ",".join(self.class_names), **timings, **private,
                   protocol.COMPUTE_SECONDS: time.perf_counter() - started}
        named = payload.cast_floats(named, self.cfg.synthesis.upload_dtype)
        named, num_examples = faults.inject(self.cfg, self.partition_id, 0, named, len(self.split.train))
        return payload.encode(named), num_examples, metrics

    def private_round0(self, named: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Scalar]]:
        """The round-0 upload with local DP on its adapter and embedding rows when privacy.noise-multiplier > 0
        (warmfed_flwr/trust/dp.py), then with the ``dp_clipped`` metric; else ``named`` unchanged."""
        privacy = self.cfg.privacy
        if not privacy.noise_multiplier:
            return named, {}
        private, clipped = dp.privatize_round0(named, privacy.adapter_clip_norm, privacy.embedding_clip_norm,
                                               privacy.noise_multiplier, dp.round_rng(self.noise_secret(), 0))
        return private, {dp.CLIPPED_METRIC: int(clipped)}

    def default_domain_phrase(self) -> str:
        """The client's domain name when ``generator.domain-prompts`` is on and the client holds one domain."""
        return default_domain_phrase(self.cfg.generator, self.split.domain)

    def synthetic_subset(self) -> ImageArrayDataset | None:
        """The synthetic subset the server sent once (uint8 [N, 3, H, W] on the wire), kept in state as uint8."""
        kept = load_arrays(self.context, SUBSET)
        if kept is None:
            return None
        images = np.ascontiguousarray(kept[protocol.SYNTHETIC_IMAGES].transpose(0, 2, 3, 1))
        return ImageArrayDataset(images, kept[protocol.SYNTHETIC_LABELS].astype(np.int64))
