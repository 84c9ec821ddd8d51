"""The server's WarmFed/FGL round-0 data, apart from Flower: synthesis from each accepted client upload, the union of
the clients' synthetic sets, its class-balanced subset, what a checkpoint keeps of them and what is sent to clients."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import ImageArrayDataset
from warmfed_flwr.errors import CheckpointError, GeneratorError
from warmfed_flwr.generative.adapters import use_adapter
from warmfed_flwr.generative.lora import adapter_schema
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import (
    cached_synthesis,
    pipeline_fingerprint,
    save_grid,
    synthesis_key,
    synthesize_batches,
)
from warmfed_flwr.wire import payload, protocol


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


class SyntheticSetBuilder:
    """The server's round-0 synthesis: the upload schema, synthesis from each accepted upload on one resident
    pipeline, the union of the clients' sets (:class:`SyntheticSet`) and its class-balanced subset.

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
