"""WarmFed/FGL client: round-0 upload (adapter + prompt embeddings), then globalization rounds."""

from __future__ import annotations

import time

import numpy as np
from flwr.common import NDArrays, Scalar

from clients.base import FederatedClient
from clients.state import load_arrays, save_arrays
from warmfed_flwr import faults, payload, protocol
from warmfed_flwr.data import ImageArrayDataset
from warmfed_flwr.warmstart import client_upload, default_domain_phrase, globalize_client

SUBSET = "synthetic-subset"


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
        loss = globalize_client(self.model, self.synthetic_subset(), self.split, self.cfg, self.device,
                                self.seed + algo_round)
        metrics = self.personalize(global_weights, algo_round, int(config[protocol.TOTAL_ROUNDS]))
        compute = {protocol.COMPUTE_SECONDS: time.perf_counter() - started}
        weights, num_examples = faults.inject(self.cfg, self.partition_id, algo_round, self.get_parameters({}),
                                              len(self.split.train))
        return weights, num_examples, {**self.identity(), "train_loss": loss, **metrics, **compute}

    def round0_upload(self) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Round 0: LoRA-adapt the generator (when enabled) and send adapter and class prompt embeddings."""
        phrase = str(self.context.node_config.get("domain-phrase", "")) or self.default_domain_phrase()
        started = time.perf_counter()
        named, timings = client_upload(self.cfg, self.split, self.class_names, self.device, self.cache_dir, phrase)
        metrics = {**self.identity(), protocol.CLASS_NAMES: ",".join(self.class_names), **timings,
                   protocol.COMPUTE_SECONDS: time.perf_counter() - started}
        named = payload.cast_floats(named, self.cfg.synthesis.upload_dtype)
        named, num_examples = faults.inject(self.cfg, self.partition_id, 0, named, len(self.split.train))
        return payload.encode(named), num_examples, metrics

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
