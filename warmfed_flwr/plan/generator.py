"""The generator's real architecture, instantiated on the 'meta' device: shapes and parameter counts without memory, and
nothing downloaded (SD 1.5 and SD 2.1-base from the configs committed under ``generative/sd_configs/``; any local
diffusers directory or the tiny foundation from its config files)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.wire import payload

SD_CONFIGS = Path(__file__).resolve().parent.parent / "generative" / "sd_configs"
KNOWN_BASES = {
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "CompVis/stable-diffusion-v1-4": "sd15",
    "stabilityai/stable-diffusion-2-1-base": "sd21base",
    "stabilityai/stable-diffusion-2-base": "sd21base",
}
"""Hub ids whose architecture is committed under sd_configs/ (SD 1.4 shares SD 1.5's, SD 2-base SD 2.1-base's)."""


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
