"""WarmFed and FGL steps as plain functions: the client's round-0 upload, the server's synthesis and
warm-start training, the class-balanced synthetic subset and the globalization fine-tunes."""

from __future__ import annotations

import gc
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from warmfed_flwr import payload, protocol
from warmfed_flwr.config import ExperimentConfig, GeneratorConfig
from warmfed_flwr.data import ClientSplit, ImageArrayDataset, ImageFileDataset
from warmfed_flwr.data.cache_files import ArrayCheck, require_arrays
from warmfed_flwr.data.partition import MIXED_DOMAIN
from warmfed_flwr.errors import CheckpointError, GeneratorError
from warmfed_flwr.generative.lora import adapter_schema, fit_adapter, use_adapter
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import (
    ChunkedTensor,
    cached_arrays,
    cached_synthesis,
    pipeline_fingerprint,
    save_grid,
    synthesis_key,
    synthesize_batches,
)
from warmfed_flwr.models import seeded_model
from warmfed_flwr.personalization import distillation_kl
from warmfed_flwr.training import (
    Objective,
    cross_entropy,
    evaluate,
    get_weights,
    predict_logits,
    set_weights,
    train_epochs,
)

logger = logging.getLogger(__name__)


def default_domain_phrase(cfg: GeneratorConfig, domain: str) -> str:
    """A client's prompts' domain phrase when ``generator.domain-prompts`` is on: its ``generator.domain-phrases``
    entry, else its domain name; none for mixes."""
    if not cfg.domain_prompts or domain == MIXED_DOMAIN:
        return ""
    return cfg.domain_phrase_map().get(domain, domain)


CPU_LORA_MAX_PARAMETERS = 50_000_000
"""A UNet above this size (SD 1.5: 860M) is not LoRA-trained on a CPU that ``device='auto'`` fell back to."""


def cpu_lora_refusal(unet_parameters: int, cfg: ExperimentConfig, device: torch.device) -> str | None:
    """Why a client on ``device`` refuses to LoRA-train a UNet of ``unet_parameters`` (None: it does not)."""
    if device.type == "cpu" and cfg.device == "auto" and cfg.lora.enabled and unet_parameters > CPU_LORA_MAX_PARAMETERS:
        return (
            f"generator '{cfg.generator.base}' has a {unet_parameters / 1e6:.0f}M-parameter UNet and this client sees "
            "no CUDA device; give client actors GPUs (--federation-config \"client-resources-num-gpus=0.5\") or set "
            "device='cpu' to train its LoRA on CPU anyway"
        )
    return None


def refuse_large_generator_on_cpu(pipe: StableDiffusionPipeline, cfg: ExperimentConfig, device: torch.device) -> None:
    """Raise GeneratorError when a full-size UNet would train on CPU only because no GPU was visible."""
    reason = cpu_lora_refusal(sum(p.numel() for p in pipe.unet.parameters()), cfg, device)
    if reason:
        raise GeneratorError(reason)


def dataset_key(*parts: Any) -> str:
    """``synthesis_key`` of ``parts`` where a dataset counts as the (images, labels) float tensors it yields, without
    a float copy of a uint8 ``ImageArrayDataset`` (its key equals that of a TensorDataset of the same floats)."""
    return synthesis_key(*(_hashable(part) for part in parts))


def _hashable(part: Any) -> Any:
    """What ``dataset_key`` hashes for ``part``: a dataset as its (images, labels), else ``part`` itself."""
    if isinstance(part, ImageArrayDataset):
        def chunks() -> Iterator[torch.Tensor]:
            return (part.float_images(start, start + 256) for start in range(0, len(part), 256))

        images = ChunkedTensor((len(part), 3, *part.images.shape[1:3]), torch.float32, chunks)
        return images, torch.from_numpy(np.array(part.labels, dtype=np.int64))
    if isinstance(part, ImageFileDataset):
        return list(part.paths), np.array(part.labels, dtype=np.int64)
    if isinstance(part, TensorDataset):
        return part.tensors
    return part


def client_upload(
    cfg: ExperimentConfig, split: ClientSplit, class_names: list[str], device: torch.device,
    cache_dir: Path, domain_phrase: str = "",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Round 0 on a client: LoRA fine-tune (when enabled) and class prompt embeddings, as named arrays.

    The LoRA trains on the client's train images at their original resolution (``split.native_train``) when the
    source keeps them, else on the train split. The result is cached on the client's disk, keyed by the generator's
    weights, the private train split (and its original files), the prompts, the LoRA config and the seed, so a rerun
    (an ablation of the later rounds) repeats round 0 exactly.
    """
    pipe = load_pipeline(resolve_base(cfg.generator, cache_dir, cfg.data.image_size), device, cfg.generator.dtype)
    refuse_large_generator_on_cpu(pipe, cfg, device)
    prompts = class_prompts(cfg.generator.prompt_template, class_names, domain_phrase)
    lora_images = split.train if split.native_train is None else split.native_train
    native = [] if split.native_train is None else ["native-resolution train images", split.native_train]
    key = dataset_key("round-0 upload", pipeline_fingerprint(pipe), str(pipe.dtype), split.train, prompts,
                      cfg.generator.prompt_template, domain_phrase, cfg.lora if cfg.lora.enabled else None, cfg.seed,
                      *native)
    timings: dict[str, float] = {}

    def make() -> dict[str, np.ndarray]:
        if not cfg.lora.enabled:
            return {protocol.EMBEDDINGS: prompt_embeddings(pipe, prompts).float().numpy()}
        started = time.perf_counter()
        adapter, embeddings = fit_adapter(pipe, lora_images, class_names, cfg.generator.prompt_template, cfg.lora,
                                          seed=cfg.seed, domain_phrase=domain_phrase)
        timings["lora_seconds"] = time.perf_counter() - started
        return {protocol.EMBEDDINGS: embeddings.numpy(),
                **{protocol.ADAPTER_PREFIX + k: v.float().cpu().numpy() for k, v in adapter.items()}}

    return cached_arrays(cache_dir / "uploads", key, make, upload_check(len(prompts), cfg.lora.enabled)), timings


def upload_check(classes: int, with_adapter: bool) -> ArrayCheck:
    """A check that a cached round-0 upload holds the embeddings [classes, seq, dim] and, exactly when
    ``with_adapter``, adapter entries; a cache file that fails it is rebuilt."""

    def check(named: dict[str, np.ndarray]) -> None:
        require_arrays({protocol.EMBEDDINGS: 3})(named)
        if len(named[protocol.EMBEDDINGS]) != classes:
            raise ValueError(f"embeddings of {len(named[protocol.EMBEDDINGS])} classes, not {classes}")
        if with_adapter != any(name.startswith(protocol.ADAPTER_PREFIX) for name in named):
            raise ValueError("adapter entries " + ("missing" if with_adapter else "where none belong"))

    return check


def round0_sample_size(available: int, fraction: float, min_clients: int) -> int:
    """Clients asked for a round-0 upload: ``ceil(fraction x available)``, at least ``min_clients``, at most all."""
    wanted = math.ceil(round(fraction * available, 9))
    return min(available, max(min_clients, wanted))


def synthetic_images_per_class(total_images: int, clients: int, classes: int, images_per_class: int) -> int:
    """Images the server synthesizes per class and accepted client: ``images_per_class`` when ``total_images`` is 0,
    else the budget spread evenly over ``clients`` x ``classes`` (at least 1), so the set stays flat as clients
    grow."""
    if total_images == 0:
        return images_per_class
    return max(1, total_images // (max(clients, 1) * max(classes, 1)))


def balanced_subset(labels: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced random subset holding ``ratio`` of each class."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        keep = max(1, round(ratio * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


@dataclass
class SyntheticSet:
    """The server's labelled synthetic data as uint8 [N, H, W, 3] images, with the client each image came from."""

    images: np.ndarray
    labels: torch.Tensor
    sources: list[str] = field(default_factory=list)

    def dataset(self, index: torch.Tensor | None = None) -> ImageArrayDataset:
        """The images (those at ``index``, when given) as a dataset that yields float images per item."""
        if index is None:
            return ImageArrayDataset(self.images, self.labels.numpy())
        chosen = index.numpy()
        return ImageArrayDataset(self.images[chosen], self.labels.numpy()[chosen])


ADAPTER_LOCK = threading.Lock()
"""Held while a LoRA adapter loads into or leaves a pipeline: peft builds adapter layers under ``init_empty_weights``,
which patches ``torch.nn.Module.register_parameter`` process-wide, so concurrent loads corrupt each other's weights
(seen as all-black images from parallel synthesis without the lock)."""


class SyntheticWarmStart:
    """The server's WarmFed/FGL work, apart from Flower: round 0's upload schema, synthesis from each accepted upload
    on one resident pipeline, the one-shot (warm-start) model and its class-balanced synthetic subset; later rounds'
    server fine-tuning of the aggregated model on that subset.

    ``synthesis.devices`` places the pipeline on its first listed device and, in round 0, one more copy on each
    further device, so several clients' synthetic sets are made at once (one client per device at a time).
    """

    def __init__(self, cfg: ExperimentConfig, class_names: list[str], device: torch.device,
                 cache_dir: Path, output_dir: Path) -> None:
        self.cfg = cfg
        self.class_names = class_names
        self.device = device
        self.cache_dir = cache_dir
        self.output_dir = output_dir
        self.base = resolve_base(cfg.generator, cache_dir, cfg.data.image_size)
        self.synthesis_devices = [torch.device(name) for name in cfg.synthesis.device_list()] or [device]
        self.pipe: StableDiffusionPipeline | None = load_pipeline(self.base, self.synthesis_devices[0],
                                                                   cfg.generator.dtype)
        self.extra_pipes: list[StableDiffusionPipeline] = []
        self.generator_hash = pipeline_fingerprint(self.pipe)
        self.model = seeded_model(cfg.model, len(class_names), cfg.seed)
        self.synthetic: SyntheticSet | None = None
        self.subset: ImageArrayDataset | None = None
        self.synthesis_keys: dict[str, str] = {}
        self.subset_index: torch.Tensor | None = None

    def generator(self) -> StableDiffusionPipeline:
        """The resident pipeline; refused once :meth:`release_generator` ran."""
        if self.pipe is None:
            raise GeneratorError("the server released its generator after round 0's synthesis; later rounds use none")
        return self.pipe

    def release_generator(self) -> None:
        """Drop the pipelines once round 0 has synthesized, and their cached GPU memory: later rounds need none."""
        self.pipe = None
        self.extra_pipes = []
        gc.collect()
        if any(d.type == "cuda" for d in (self.device, *self.synthesis_devices)):
            torch.cuda.empty_cache()

    def upload_schema(self) -> payload.Schema:
        """Entry names, shapes and dtypes a round-0 upload must have."""
        reference = prompt_embeddings(self.generator(), class_prompts(self.cfg.generator.prompt_template,
                                                                      self.class_names))
        schema: dict[str, tuple[tuple[int, ...], str]] = {protocol.EMBEDDINGS: (tuple(reference.shape), "float32")}
        if self.cfg.lora.enabled:
            for key, (shape, _dtype) in adapter_schema(self.generator(), self.cfg.lora).items():
                schema[protocol.ADAPTER_PREFIX + key] = (tuple(shape), "float32")
        return schema

    def images_per_class(self, clients: int) -> int:
        """Images per class the server synthesizes for each of ``clients`` accepted clients."""
        syn = self.cfg.synthesis
        return synthetic_images_per_class(syn.total_images, clients, len(self.class_names), syn.images_per_class)

    def synthesize_client(
        self, client: str, named: dict[str, np.ndarray], seed: int, pipe: StableDiffusionPipeline | None = None,
        images_per_class: int | None = None,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 images [N, H, W, 3] and labels generated from one client's embeddings (and adapter, when sent)
        with ``seed``, ``images_per_class`` per class (default: synthesis.images-per-class), on ``pipe`` (default:
        the resident pipeline), streamed batch by batch into the cache."""
        syn = self.cfg.synthesis
        per_class = syn.images_per_class if images_per_class is None else images_per_class
        embeddings = torch.from_numpy(named[protocol.EMBEDDINGS])
        adapter = {k: torch.from_numpy(v) for k, v in payload.split_prefix(named, protocol.ADAPTER_PREFIX).items()}
        size = self.cfg.data.image_size
        key = synthesis_key(embeddings, adapter, self.generator_hash, per_class, syn.steps, syn.guidance, seed, size,
                            syn.negative_prompt, syn.timestep_spacing, syn.batch_size)
        self.synthesis_keys[client] = key

        def make() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            active = pipe if pipe is not None else self.generator()
            adapter_loaded = ExitStack()
            with ADAPTER_LOCK:
                adapter_loaded.enter_context(use_adapter(active, adapter, client) if adapter else nullcontext())
            try:
                yield from synthesize_batches(active, embeddings, per_class, syn.steps, syn.guidance,
                                              syn.batch_size, seed, size=size, negative_prompt=syn.negative_prompt,
                                              timestep_spacing=syn.timestep_spacing)
            finally:
                with ADAPTER_LOCK:
                    adapter_loaded.close()

        images, labels = cached_synthesis(self.cache_dir / "synthetic", key, make)
        save_grid(images, labels, self.output_dir / f"synthetic_{client}.png")
        return images, torch.from_numpy(labels)

    def build_synthetic(self, uploads: list[tuple[str, dict[str, np.ndarray]]]) -> SyntheticSet:
        """The union of every accepted client's synthetic images, and its class-balanced subset.

        Each client gets :meth:`images_per_class` images per class. Each client's images get their own seed, so
        identical prompt embeddings (FGL) still give distinct images, and the same images whichever device
        (``synthesis.devices``) makes them.
        """
        seeds = [self.cfg.seed * 1000 + index for index in range(len(uploads))]
        per_class = self.images_per_class(len(uploads))
        if len(self.synthesis_devices) == 1 or len(uploads) < 2:
            parts = [(client, *self.synthesize_client(client, named, seed, images_per_class=per_class))
                     for (client, named), seed in zip(uploads, seeds, strict=True)]
        else:
            parts = self._synthesize_parallel(uploads, seeds, per_class)
        return self._keep(parts)

    def _synthesize_parallel(self, uploads: list[tuple[str, dict[str, np.ndarray]]], seeds: list[int],
                             per_class: int) -> list[tuple[str, np.ndarray, torch.Tensor]]:
        """Every client's synthetic set, made in threads that each hold one pipeline (one device) at a time."""
        if not self.extra_pipes:
            self.extra_pipes = [load_pipeline(self.base, device, self.cfg.generator.dtype)
                                for device in self.synthesis_devices[1:]]
        free: queue.SimpleQueue[StableDiffusionPipeline] = queue.SimpleQueue()
        for pipe in (self.generator(), *self.extra_pipes):
            free.put(pipe)

        def one(client: str, named: dict[str, np.ndarray], seed: int) -> tuple[str, np.ndarray, torch.Tensor]:
            pipe = free.get()
            try:
                with torch.cuda.device(pipe.device) if pipe.device.type == "cuda" else nullcontext():
                    return (client, *self.synthesize_client(client, named, seed, pipe, per_class))
            finally:
                free.put(pipe)

        with ThreadPoolExecutor(len(self.synthesis_devices), thread_name_prefix="synthesis") as pool:
            futures = [pool.submit(one, client, named, seed)
                       for (client, named), seed in zip(uploads, seeds, strict=True)]
            return [future.result() for future in futures]

    def checkpoint_state(self) -> dict[str, Any]:
        """What identifies the synthetic set in the cache (client and key, in order) and the subset chosen from it."""
        if self.synthetic is None or self.subset_index is None:
            return {}
        clients = list(dict.fromkeys(self.synthetic.sources))
        return {"synthesis": [[client, self.synthesis_keys[client]] for client in clients],
                "subset_index": self.subset_index.tolist()}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Reload the synthetic set and its subset from the cache, as :meth:`checkpoint_state` identified them."""
        if not state:
            return
        cache = self.cache_dir / "synthetic"
        parts = []
        for client, key in state["synthesis"]:
            def gone(client: str = client, key: str = key) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                raise CheckpointError(f"the synthetic set of client {client} is gone from the cache "
                                      f"({cache / (key + '.npz')} is missing or unreadable); start the run again "
                                      "without resume")

            images, labels = cached_synthesis(cache, key, gone)
            parts.append((client, images, torch.from_numpy(labels)))
            self.synthesis_keys[client] = key
        self._keep(parts, torch.tensor(state["subset_index"], dtype=torch.long))

    def _keep(self, parts: list[tuple[str, np.ndarray, torch.Tensor]],
              subset_index: torch.Tensor | None = None) -> SyntheticSet:
        """Keep the union of the clients' parts and its subset (class-balanced unless ``subset_index`` is given)."""
        self.synthetic = SyntheticSet(
            images=np.concatenate([p[1] for p in parts]),
            labels=torch.cat([p[2] for p in parts]),
            sources=[client for client, images, _ in parts for _ in range(len(images))],
        )
        if subset_index is None:
            subset_index = balanced_subset(self.synthetic.labels, self.cfg.synthesis.subset_ratio, self.cfg.seed)
        self.subset_index = subset_index
        self.subset = self.synthetic.dataset(subset_index)
        return self.synthetic

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

    def subset_arrays(self) -> dict[str, np.ndarray]:
        """The synthetic subset as the named arrays sent to clients once."""
        assert self.subset is not None, "build_synthetic must run first"
        return {protocol.SYNTHETIC_IMAGES: np.ascontiguousarray(self.subset.images.transpose(0, 3, 1, 2)),
                protocol.SYNTHETIC_LABELS: np.asarray(self.subset.labels, dtype=np.int64)}

    def audit_arrays(self, client: str, count: int) -> dict[str, np.ndarray]:
        """A seeded sample of at most ``count`` synthetic images made from ``client``'s own upload (``sources``
        records each image's client), as the named array sent to that client once for its privacy audit; empty when
        ``count`` is 0 or no image came from ``client``."""
        assert self.synthetic is not None, "build_synthetic must run first"
        own = np.flatnonzero(np.array(self.synthetic.sources) == client)
        if not count or not len(own):
            return {}
        chosen = np.sort(np.random.default_rng(self.cfg.seed).choice(own, min(count, len(own)), replace=False))
        return {protocol.AUDIT_IMAGES: np.ascontiguousarray(self.synthetic.images[chosen].transpose(0, 3, 1, 2))}

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
