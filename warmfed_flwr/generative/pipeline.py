"""One loader for every generator: a hub id, a local diffusers directory, or the embedded tiny foundation."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.pipelines import pipeline_utils
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from warmfed_flwr.config.schema import GeneratorConfig
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.foundation import ensure_foundation
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.shipped import shipped_foundation

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_KWARG = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
"""diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (PR 14205); older releases only know the former."""
_SLICED_VAE_FROM = 256
"""Decode one image at a time from this resolution up, so batch-64 decoding fits in GPU memory."""


def torch_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a config dtype: 'auto' is float16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise GeneratorError(f"config key 'generator.dtype' = {dtype!r} is unknown; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_pipeline(base: str, device: torch.device, dtype: str = "auto") -> StableDiffusionPipeline:
    """Load a StableDiffusionPipeline from a hub id or a local diffusers directory, ready for sampling on ``device``.

    Weights load in ``dtype`` (passed as ``torch_dtype`` to diffusers releases before the ``dtype`` rename).
    The safety checker is dropped, sampling uses DDIM (the saved scheduler's betas), progress bars are off, and
    attention runs through torch's scaled_dot_product_attention (diffusers' default processor), which
    picks flash or memory-efficient kernels on CUDA; the VAE decodes image by image at 256 px and above.
    """
    dtype_t = torch_dtype(dtype, device)
    if not sys.stderr.isatty():  # diffusers' and transformers' loading bars would fill Flower's log
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            base, safety_checker=None, requires_safety_checker=False, **{_DTYPE_KWARG: dtype_t}
        )
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, ImportError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise GeneratorError(
            f"cannot load generator '{base}': {reason}; give a diffusers directory or a hub id reachable online"
        ) from exc
    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if pipe.unet.config.sample_size * pipe.vae_scale_factor >= _SLICED_VAE_FROM:
        pipe.vae.enable_slicing()
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    logger.info(
        "generator '%s' loaded on %s (%s, %d px, attention %s)", base, device, dtype_t,
        pipe.unet.config.sample_size * pipe.vae_scale_factor,
        type(next(iter(pipe.unet.attn_processors.values()))).__name__ if pipe.unet.attn_processors else "none",
    )
    return pipe


def resolve_base(cfg: GeneratorConfig, cache_dir: Path, image_size: int = 32) -> str:
    """``cfg.base`` unchanged, or for 'tiny' the tiny foundation's directory.

    That is the verified foundation shipped in the package when the spec and template are its recipe, else the
    one built for them under ``cache_dir`` (on first use).
    """
    if cfg.base != "tiny":
        return cfg.base
    spec = FoundationSpec(
        steps=cfg.foundation_steps, source=cfg.foundation_source, image_size=image_size,
        style_steps=cfg.foundation_style_steps,
    )
    shipped = shipped_foundation(spec, cfg.prompt_template)
    if shipped is not None:
        return str(shipped)
    return str(ensure_foundation(spec, Path(cache_dir), cfg.prompt_template))
