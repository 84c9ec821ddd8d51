"""``warmfed-plan``: what a run will send, synthesize and hold in memory, and whether it will be refused, before
anything heavy runs.

The generator's real architecture (SD 1.5, SD 2.1-base from the configs committed under
``generative/sd_configs/``; any local diffusers directory or the tiny foundation from its config files) is
instantiated on the 'meta' device: shapes and parameter counts without memory, and nothing downloaded. Class and
image counts come from ``data.path`` when it exists, else from :data:`KNOWN_DATASETS` (sources stated).

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

import argparse
import contextlib
import functools
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from warmfed_flwr import payload, protocol
from warmfed_flwr.config import DataConfig, ExperimentConfig, LoraConfig, load_yaml, resolve
from warmfed_flwr.errors import ConfigError, WarmFedError
from warmfed_flwr.generative.images import batch_limit
from warmfed_flwr.warmstart import round0_sample_size, synthetic_images_per_class

SD_CONFIGS = Path(__file__).resolve().parent / "generative" / "sd_configs"
KNOWN_BASES = {
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "CompVis/stable-diffusion-v1-4": "sd15",
    "stabilityai/stable-diffusion-2-1-base": "sd21base",
    "stabilityai/stable-diffusion-2-base": "sd21base",
}
"""Hub ids whose architecture is committed under sd_configs/ (SD 1.4 shares SD 1.5's, SD 2-base SD 2.1-base's)."""
ACTIVATION_FACTOR = 3
"""Saved tensors per leaf-module output in a LoRA training step (rough; see the module docstring)."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GIB, MIB = 2**30, 2**20
UNSET_PATH = "(not given)"
"""The data.path the plan resolves with when none is given (the known facts then stand in for the data)."""


@dataclass(frozen=True)
class KnownDataset:
    """Published facts about a dataset: classes and images per domain (``train``: an official train split)."""

    classes: int
    images: dict[str, int]
    source: str
    train: dict[str, int] = field(default_factory=dict)


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "digits": KnownDataset(10, {"mnist": 1500, "digits": 1797, "fonts": 1500, "mnistm": 1500},
                           "this project's offline digits benchmark (README, Data)"),
    "office_caltech10": KnownDataset(
        10, {"amazon": 958, "caltech": 1123, "dslr": 157, "webcam": 295},
        "Office-Caltech10 (Gong et al., CVPR 2012; as used by FedBN): 2,533 images"),
    "pacs": KnownDataset(
        7, {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
        "PACS (Li et al., ICCV 2017): 9,991 images"),
    "domainnet345": KnownDataset(
        345, {"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500, "real": 172947,
              "sketch": 69128},
        "DomainNet cleaned split files (Peng et al., ICCV 2019): 586,575 images, official train split ~70 %",
        train={"clipart": 33525, "infograph": 36023, "painting": 50416, "quickdraw": 120750, "real": 120906,
               "sketch": 48212}),
    "camelyon17": KnownDataset(
        2, {"hospital0": 59436, "hospital1": 34904, "hospital2": 85054, "hospital3": 129838, "hospital4": 146722},
        "Camelyon17-WILDS (Koh et al., ICML 2021): 455,954 96 px patches from 5 hospitals"),
}
"""Used when ``data.path`` does not exist. A DomainNet class subset is estimated as its share of each domain."""


@dataclass(frozen=True)
class Architecture:
    """What the plan needs to know about a generator, read from its configs on the 'meta' device."""

    name: str
    unet_parameters: int
    vae_parameters: int
    text_parameters: int
    image_size: int
    latent: tuple[int, int, int]
    tokens: int
    text_dim: int
    adapter: payload.Schema
    leaf_activations: int
    """Elements output by the UNet's leaf modules in one forward pass of one sample (0: not measured)."""

    @property
    def parameters(self) -> int:
        return self.unet_parameters + self.vae_parameters + self.text_parameters


@dataclass(frozen=True)
class DataFacts:
    """Classes and per-domain image counts (total and train) and where they come from."""

    classes: int
    images: dict[str, int]
    train: dict[str, int]
    source: str


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


def _configs(base: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(name, unet, vae, text encoder configs) of ``base``: a known hub id, a local directory or 'tiny'."""
    if base in KNOWN_BASES:
        directory = SD_CONFIGS / KNOWN_BASES[base]
        files = (directory / "unet.json", directory / "vae.json", directory / "text_encoder.json")
        name = f"{KNOWN_BASES[base]} (committed config)"
    else:
        if base == "tiny":
            from warmfed_flwr.generative.shipped import SHIPPED_DIR
            directory = SHIPPED_DIR
        else:
            directory = Path(base).expanduser()
        files = (directory / "unet" / "config.json", directory / "vae" / "config.json",
                 directory / "text_encoder" / "config.json")
        name = f"{base} (its config files)"
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(
                f"config key 'generator.base' = '{base}': warmfed-plan downloads nothing and knows the hub ids "
                f"{', '.join(KNOWN_BASES)}; {missing[0]} is missing, so give a local diffusers directory"
            )
    return (name, *(json.loads(f.read_text()) for f in files))


@functools.lru_cache(maxsize=8)
def architecture(base: str, lora: LoraConfig, activations: bool = True) -> Architecture:
    """The generator's shapes, parameter counts, adapter schema and (when ``activations``) per-sample training
    activations, all on 'meta'."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from warmfed_flwr.generative.lora import unet_adapter_schema

    name, unet_cfg, vae_cfg, text_cfg = _configs(base)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_cfg.items() if k != "architectures"}))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    dim, tokens = text.config.hidden_size, text.config.max_position_embeddings
    leaf_activations = _leaf_activations(unet, latent, tokens, unet.config.cross_attention_dim) if activations else 0
    adapter = unet_adapter_schema(unet, lora) if lora.enabled else {}
    return Architecture(name, _count(unet), _count(vae), _count(text), unet.config.sample_size * scale, latent,
                        tokens, dim, adapter, leaf_activations)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _leaf_activations(unet: torch.nn.Module, latent: tuple[int, int, int], tokens: int, context: int) -> int:
    """Elements output by every leaf module in one meta forward pass of one sample."""
    total = 0

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    handles = [m.register_forward_hook(hook) for m in unet.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta = torch.device("meta")
            unet(torch.empty(1, *latent, device=meta), torch.zeros(1, dtype=torch.long, device=meta),
                 encoder_hidden_states=torch.empty(1, tokens, context, device=meta))
    finally:
        for handle in handles:
            handle.remove()
    return total


def _count_files(folder: Path) -> int:
    return sum(1 for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _from_path(cfg: DataConfig, root: Path) -> DataFacts | None:
    """Counts read from the dataset's folders, split files or metadata (None: no layout this knows)."""
    domains, wanted = cfg.domain_list(), set(_class_subset(cfg))
    images: dict[str, int] = {}
    train: dict[str, int] = {}
    classes: set[str] = set()
    if cfg.source == "imagefolder":
        for domain in domains:
            folders = [c for c in sorted((root / domain).iterdir()) if c.is_dir() and (not wanted or c.name in wanted)]
            classes.update(c.name for c in folders)
            images[domain] = sum(_count_files(c) for c in folders)
    elif cfg.source == "domainnet":
        for domain in domains:
            for split in ("train", "test"):
                lines = [line.split()[0] for line in (root / f"{domain}_{split}.txt").read_text().splitlines()
                         if line.strip()]
                lines = [line for line in lines if not wanted or Path(line).parts[1] in wanted]
                classes.update(Path(line).parts[1] for line in lines)
                images[domain] = images.get(domain, 0) + len(lines)
                if split == "train":
                    train[domain] = len(lines)
    elif cfg.source == "camelyon17" and (root / "metadata.csv").is_file():
        import csv

        with (root / "metadata.csv").open() as file:
            for row in csv.DictReader(file):
                domain = f"hospital{int(float(row['center']))}"
                images[domain] = images.get(domain, 0) + 1
                classes.add(row["tumor"])
    else:
        return None
    return DataFacts(len(classes), images, train, f"counted under {root}")


def _class_subset(cfg: DataConfig) -> list[str]:
    """The class folders ``data.classes`` keeps (only the domainnet source reads it)."""
    return cfg.class_list() if cfg.source == "domainnet" else []


def _known(cfg: DataConfig) -> DataFacts:
    """Counts from KNOWN_DATASETS, matched by source and domains."""
    domains, subset = cfg.domain_list(), _class_subset(cfg)
    for facts in KNOWN_DATASETS.values():
        if set(domains) <= set(facts.images):
            classes = len(subset) or facts.classes
            share = classes / facts.classes
            images = {d: math.ceil(facts.images[d] * share) for d in domains}
            train = {d: math.ceil(facts.train[d] * share) for d in domains if d in facts.train}
            source = facts.source + (f"; {classes} of its {facts.classes} classes estimated as that share of each "
                                     "domain" if subset else "")
            return DataFacts(classes, images, train, f"known facts: {source}")
    raise ConfigError(
        f"config key 'data.path' = '{cfg.path}' does not exist and warmfed-plan knows no dataset with the domains "
        f"'{cfg.domains}'; give the data's path so it can count the images"
    )


def data_facts(cfg: DataConfig) -> DataFacts:
    """Class and image counts: from ``data.path`` when it exists, else the known facts; capped by max-per-domain."""
    root = Path(cfg.path).expanduser() if cfg.path else None
    try:
        counted = _from_path(cfg, root) if root is not None and root.is_dir() else None
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"config key 'data.path' = '{cfg.path}': cannot count its images ({exc}); check the "
                          f"layout data.source = '{cfg.source}' expects") from exc
    facts = counted or _known(cfg)
    cap = cfg.max_per_domain or math.inf
    images = {d: int(min(n, cap)) for d, n in facts.images.items()}
    train = {d: int(min(facts.train.get(d, round(images[d] * (1 - cfg.test_fraction))), images[d]))
             for d in images}
    return DataFacts(facts.classes, images, train, facts.source)


def parse_pairs(texts: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs as Flower reads them ('text' or "text", 3, 0.5, true/false); bare words stay strings."""
    pairs: dict[str, Any] = {}
    for text in texts:
        for item in shlex.split(text, posix=False):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"'{item}' is not key=value; write e.g. train.rounds=3")
            pairs[key.strip()] = _value(value.strip())
    return pairs


def _value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _bytes_of(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]


def _classifier_bytes(cfg: ExperimentConfig, classes: int) -> int:
    """Bytes of the classifier's weights as they travel (floats as float32, see training.get_weights)."""
    from warmfed_flwr.models import build_model

    with torch.device("meta"):
        model = build_model(cfg.model.model_copy(update={"pretrained_path": ""}), classes)
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def make_plan(cfg: ExperimentConfig, federation: dict[str, Any], data: DataFacts | None = None) -> Plan:
    """The plan of ``cfg`` under the federation settings ``federation`` (num-supernodes, client-resources-*), for
    ``data`` (default: counted from ``data.path`` or the known facts)."""
    from warmfed_flwr.warmstart import cpu_lora_refusal

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
            notes.append(f"upload limit {_fmt(limit)} (round-0 schema {_fmt(schema_bytes)} in float32 + "
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


def _fmt(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:,.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{int(n)} B"


def render(plan: Plan) -> str:
    """The plan as the lines ``warmfed-plan`` prints."""
    cfg, arch, data = plan.cfg, plan.arch, plan.data
    domains = ", ".join(f"{d} {n:,}" for d, n in data.train.items())
    lines = [
        f"warmfed-plan: experiment {cfg.experiment}, algorithm {cfg.algorithm}, {cfg.data.num_clients} clients, "
        + ("round 0 + " if cfg.algorithm in ("warmfed", "fgl") else "") + f"{cfg.train.rounds} rounds",
        f"generator  {cfg.generator.base} = {arch.name}, built on 'meta' (nothing allocated or downloaded): UNet "
        f"{arch.unet_parameters / 1e6:.1f}M, VAE {arch.vae_parameters / 1e6:.1f}M, text encoder "
        f"{arch.text_parameters / 1e6:.1f}M parameters; {arch.image_size} px; embeddings {arch.tokens}x{arch.text_dim}",
        f"adapter    rank {cfg.lora.rank} on {cfg.lora.targets}: {len(arch.adapter)} tensors, "
        f"{_fmt(payload.schema_bytes(arch.adapter))} float32, {_fmt(payload.schema_bytes(arch.adapter) // 2)} "
        "float16" if cfg.lora.enabled else "adapter    none (lora.enabled = false)",
        f"data       {cfg.data.source}: {data.classes} classes, {sum(data.images.values()):,} images "
        f"({data.source})",
        f"           train images per client: {domains}",
        f"devices    clients {'GPU' if plan.client_gpu else 'CPU'}, server {'GPU' if plan.server_gpu else 'CPU'} "
        f"(device = {cfg.device}); generator dtype {cfg.generator.dtype} -> {plan.dtype} on the server",
        "",
        f"{'stage':<20} {'each client sends':>18} {'each receives':>15}  what",
    ]
    lines += [f"{name:<20} {_fmt(up):>18} {_fmt(down):>15}  {what}" for name, up, down, what in plan.stages]
    lines += ["", "memory (estimates summed over the stages, not a measured peak; see warmfed_flwr/plan.py)"]
    for who, items in (("server", plan.server_memory), ("client", plan.client_memory)):
        sums = {where: sum(n for at, _, n in items if at == where) for where in ("GPU", "CPU")}
        lines.append(f"{who}: " + ", ".join(f"{where} {_fmt(n)}" for where, n in sums.items() if n))
        lines += [f"  {where} {_fmt(n):>11}  {what}" for where, what, n in items]
    lines.append("")
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"REFUSED: {reason}" for reason in plan.refusals]
    lines.append("verdict: " + (f"{len(plan.refusals)} refusal(s): fix them first" if plan.refusals
                                else "no refusal foreseen"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: print the plan of an experiment; exit 1 when a refusal is foreseen."""
    parser = argparse.ArgumentParser(prog="warmfed-plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an experiment YAML (a path, or a name under conf/)")
    parser.add_argument("--run-config", action="append", default=[], help="'key=value ...' as for flwr run")
    parser.add_argument("--federation-config", action="append", default=[],
                        help="'num-supernodes=N client-resources-num-gpus=0.5 ...' as for flwr run")
    args = parser.parse_args(argv)
    try:
        overrides = {"experiment": args.config, **parse_pairs(args.run_config)}
        if "data.path" not in overrides and not load_yaml(str(overrides["experiment"])).get("data.path"):
            overrides["data.path"] = UNSET_PATH
        plan = make_plan(resolve(overrides), parse_pairs(args.federation_config))
    except WarmFedError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with contextlib.suppress(BrokenPipeError):
        print(render(plan))
    raise SystemExit(1 if plan.refusals else 0)


if __name__ == "__main__":
    main()
