"""What a run will send, synthesize and hold in memory, and the refusals it will meet (:func:`make_plan`).

Memory figures are estimates:
- weights: parameters x the bytes of the generator dtype ('auto' = float16 where a GPU is planned, else float32);
- LoRA training activations (rough): the elements every leaf module of the UNet outputs in one forward pass at its
  native size (measured on 'meta'), x ACTIVATION_FACTOR for what autograd keeps besides (inputs of norms,
  activations and attention), x ``lora.batch-size``, in the dtype's bytes. Take it as an order of magnitude;
- the client's LoRA images: one batch at the generator's size (``images.batch_limit``), float32 on the CPU, and the
  VAE posterior mean and std (float32, on the client's device) of at most ``lora.steps x lora.batch-size`` train
  images, as ``finetune_lora`` holds them;
- the synthetic set (server) and subset (client) at the classifier's size as uint8, as cached and sent (images
  become float per training batch), and the client's private data as uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.generative.images import batch_limit
from warmfed_flwr.methods.round0_upload import cpu_lora_refusal, round0_sample_size
from warmfed_flwr.methods.synthetic_set import synthetic_images_per_class
from warmfed_flwr.plan.data_facts import DataFacts, data_facts
from warmfed_flwr.plan.generator import Architecture, architecture
from warmfed_flwr.wire import payload, protocol

ACTIVATION_FACTOR = 3
"""Saved tensors per leaf-module output in a LoRA training step (rough; see the module docstring)."""
GIB, MIB = 2**30, 2**20


@dataclass
class Plan:
    """Every number the plan prints, and the refusals it foresees."""

    cfg: ExperimentConfig
    arch: Architecture
    data: DataFacts
    client_gpu: bool
    server_gpu: bool
    dtype: str
    upload_bytes: int
    upload_schema_bytes: int
    stages: list[tuple[str, int, int, str]]
    server_memory: list[tuple[str, str, int]]
    """(where: GPU or CPU, what, bytes)"""
    client_memory: list[tuple[str, str, int]]
    refusals: list[str]
    notes: list[str]
    synthetic_images: int = 0
    """Images the server synthesizes in round 0, over all asked clients (0 for methods without a warm start)."""


def _bytes_of(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]


def _classifier_bytes(cfg: ExperimentConfig, classes: int) -> int:
    """Bytes of the classifier's weights as they travel (floats as float32, see training.get_weights)."""
    from warmfed_flwr.learning.models import build_model

    with torch.device("meta"):
        model = build_model(cfg.model.model_copy(update={"pretrained_path": ""}), classes)
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def make_plan(cfg: ExperimentConfig, federation: dict[str, Any], data: DataFacts | None = None) -> Plan:
    """The plan of ``cfg`` under the federation settings ``federation`` (num-supernodes, client-resources-*), for
    ``data`` (default: counted from ``data.path`` or the known facts)."""
    warmstart = cfg.algorithm in ("warmfed", "fgl")
    arch = architecture(cfg.generator.base, cfg.lora, activations=warmstart and cfg.lora.enabled)
    data = data or data_facts(cfg.data)
    gpus = float(federation.get("client-resources-num-gpus", 0) or 0)
    client_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
    server_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
    dtype = cfg.generator.dtype if cfg.generator.dtype != "auto" else ("float16" if server_gpu else "float32")
    client_dtype = cfg.generator.dtype if cfg.generator.dtype != "auto" else ("float16" if client_gpu else "float32")
    wire = _bytes_of(cfg.synthesis.upload_dtype)
    schema: dict[str, tuple[tuple[int, ...], str]] = {
        protocol.EMBEDDINGS: ((data.classes, arch.tokens, arch.text_dim), "float32")}
    if cfg.lora.enabled:
        schema.update({protocol.ADAPTER_PREFIX + k: v for k, v in arch.adapter.items()})
    schema_bytes = payload.schema_bytes(schema)
    upload = schema_bytes // 4 * wire
    size = cfg.data.image_size
    clients = round0_sample_size(cfg.data.num_clients, cfg.warmfed.round0_fraction, cfg.train.min_fit_clients)
    per_class = synthetic_images_per_class(cfg.synthesis.total_images, clients, data.classes,
                                           cfg.synthesis.images_per_class)
    per_client_images = per_class * data.classes
    total_images = per_client_images * clients
    subset_images = data.classes * max(1, round(cfg.synthesis.subset_ratio * per_class * clients))
    image_bytes = 3 * size * size
    subset_bytes = subset_images * (image_bytes + 8)
    model = _classifier_bytes(cfg, data.classes)
    rounds = cfg.train.rounds
    stages: list[tuple[str, int, int, str]] = []
    if warmstart:
        adapter_note = "adapter + " if cfg.lora.enabled else ""
        stages.append(("round 0 upload", upload, 0,
                        f"{adapter_note}{data.classes} prompt embeddings of {arch.tokens}x{arch.text_dim}, "
                        f"{cfg.synthesis.upload_dtype}"))
        stages.append(("round 0 synthesis", 0, 0,
                       f"{per_class} x {data.classes} classes = {per_client_images:,} images "
                       f"per client, {total_images:,} in all ({cfg.synthesis.steps} steps, guidance "
                       f"{cfg.synthesis.guidance:g})"))
        with_subset = subset_bytes if cfg.warmfed.client_syn_finetune else 0
        stages.append(("round 1", model, model + with_subset,
                       f"model; down also the synthetic subset once ({subset_images:,} images, uint8)"
                       if with_subset else "model"))
        if rounds > 1:
            stages.append((f"rounds 2-{rounds}" if rounds > 2 else "round 2", model, model, "model, each round"))
    else:
        stages.append((f"rounds 1-{rounds}", model, model, "model, each round"))
    largest = max(data.train.values(), default=0)
    server_at, client_at = ("GPU" if server_gpu else "CPU"), ("GPU" if client_gpu else "CPU")
    server_memory = [(server_at, "classifier weights", model)]
    client_memory = [(client_at, "classifier weights", model),
                     ("CPU", f"private train split uint8 ({largest:,} images at {size} px, largest client)",
                      largest * image_bytes)]
    if warmstart:
        server_memory[:0] = [
            (server_at, f"generator weights {dtype} ({arch.parameters / 1e6:,.0f}M parameters)",
             arch.parameters * _bytes_of(dtype)),
            ("CPU", f"synthetic set uint8 ({total_images:,} images at {size} px, as cached; float per batch)",
             total_images * image_bytes)]
        if cfg.warmfed.client_syn_finetune:
            client_memory.append(("CPU", f"synthetic subset uint8 ({subset_images:,} images, as sent)",
                                  subset_images * image_bytes))
    if warmstart and cfg.lora.enabled:
        native, latent = arch.image_size, math.prod(arch.latent)
        encoded = min(largest, cfg.lora.steps * cfg.lora.batch_size)
        activations = arch.leaf_activations * ACTIVATION_FACTOR * cfg.lora.batch_size * _bytes_of(client_dtype)
        client_memory[:0] = [
            (client_at, f"generator weights {client_dtype} ({arch.parameters / 1e6:,.0f}M parameters)",
             arch.parameters * _bytes_of(client_dtype)),
            (client_at, f"LoRA training activations, rough ({arch.leaf_activations / 1e6:,.0f}M leaf outputs x "
             f"{ACTIVATION_FACTOR} x lora.batch-size {cfg.lora.batch_size}, {client_dtype})", activations),
            (client_at, f"LoRA latents mean+std float32 ({encoded:,} images x {'x'.join(map(str, arch.latent))})",
             encoded * latent * 2 * 4),
            ("CPU", f"LoRA image batch float32 at {native} px ({batch_limit(native)} images)",
             batch_limit(native) * 3 * native * native * 4),
        ]
    refusals, notes = [], []
    if warmstart:
        try:
            limit = payload.upload_limit(schema, int(cfg.synthesis.max_upload_mb * MIB))
            notes.append(f"upload limit {fmt_bytes(limit)} (round-0 schema {fmt_bytes(schema_bytes)} in float32 + "
                         f"{payload.UPLOAD_MARGIN:.0%}, at most synthesis.max-upload-mb = "
                         f"{cfg.synthesis.max_upload_mb:g}): accepted")
        except ConfigError as exc:
            refusals.append(f"upload limit: {exc}")
        reason = cpu_lora_refusal(arch.unet_parameters, cfg, torch.device("cuda" if client_gpu else "cpu"))
        if reason:
            refusals.append(f"client resources: {reason}")
    supernodes = federation.get("num-supernodes")
    if supernodes is not None and int(supernodes) != clients:
        notes.append(f"num-supernodes = {supernodes} but data.num-clients = {clients}: set them equal")
    return Plan(cfg, arch, data, client_gpu, server_gpu, dtype, upload, schema_bytes, stages, server_memory,
                client_memory, refusals, notes, total_images if warmstart else 0)


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB."""
    if n >= GIB:
        return f"{n / GIB:,.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{int(n)} B"
