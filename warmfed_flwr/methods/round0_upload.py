"""WarmFed and FGL round 0 on a client: the cached upload (LoRA adapter when enabled, class prompt embeddings), the
refusal to LoRA-train a full-size UNet on a CPU, and how many clients the server asks for an upload."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from torch.utils.data import TensorDataset

from warmfed_flwr.config.schema import ExperimentConfig, GeneratorConfig
from warmfed_flwr.data import ClientSplit, ImageArrayDataset, ImageFileDataset
from warmfed_flwr.data.cache_files import ArrayCheck, require_arrays
from warmfed_flwr.data.partition import MIXED_DOMAIN
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.lora import fit_adapter
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import ChunkedTensor, cached_arrays, pipeline_fingerprint, synthesis_key
from warmfed_flwr.wire import protocol


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
