"""Pretraining of the tiny foundation: the VAE on reconstruction, then the UNet and text encoder on noise prediction
(the class stage), then, optionally, on restyled copies under style captions (the style stage)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.nn import functional as F
from torch.utils.data import Dataset

from warmfed_flwr.data.photos import photo_crops
from warmfed_flwr.generative.diffusion import (
    TrainingLatents,
    encode_latent_stats,
    noise_prediction_loss,
    sample_latents,
    train_unet_and_text,
)
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.images import training_images
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE, class_prompts, prompt_tokens
from warmfed_flwr.generative.style_stage import train_on_styles
from warmfed_flwr.learning.training import resolve_device
from warmfed_flwr.records.progress import progress_bar

logger = logging.getLogger(__name__)


def _train_vae(
    vae: AutoencoderKL, images: torch.Tensor, spec: FoundationSpec, device: torch.device,
    extra: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Reconstruction training on ``images`` and ``extra``, then scaling_factor = 1 / std of ``images``' latents."""
    generator = torch.Generator().manual_seed(spec.seed)
    latent_source = images
    if extra is not None and len(extra):
        images = torch.cat([images, extra.to(images.dtype)])
    vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(spec.warmup_steps, spec.vae_steps), spec.vae_steps)
    losses: list[float] = []
    start = time.perf_counter()
    logger.info("foundation VAE: %d steps on %d images", spec.vae_steps, len(images))
    bar = progress_bar(range(spec.vae_steps), desc="foundation VAE", unit="step")
    for _ in bar:
        index = torch.randint(len(images), (spec.batch_size,), generator=generator)
        x = images[index].to(device) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(sample_latents(posterior.mean, posterior.std, generator)).sample
        mse = F.mse_loss(recon, x)
        loss = mse + spec.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(mse.item() / 4.0)
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    vae.eval().requires_grad_(False)
    latents = sample_latents(*encode_latent_stats(vae, latent_source), generator)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    window = max(1, min(50, len(losses) // 5))
    return {
        "vae_seconds": time.perf_counter() - start,
        "vae_mse_first": sum(losses[:window]) / window,
        "vae_mse_final": sum(losses[-window:]) / window,
        "vae_scaling_factor": scaling,
    }


def train_class_stage(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    spec: FoundationSpec,
    template: str,
    device: torch.device,
) -> dict[str, Any]:
    """The class stage: UNet + text encoder trained jointly (``spec.steps`` at ``spec.lr``) on the noise-prediction
    loss under the class prompts, with ``uncond_prob`` empty prompts."""
    generator = torch.Generator().manual_seed(spec.seed + 1)
    data = TrainingLatents.encode(pipe.vae, images, labels)
    tokens = prompt_tokens(pipe, class_prompts(template, class_names) + [""], device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    logger.info("foundation UNet+text: %d steps", spec.steps)
    losses, seconds = train_unet_and_text(
        pipe, device, spec.steps, spec.lr, spec.warmup_steps, "foundation UNet+text",
        lambda unet, text_encoder: noise_prediction_loss(
            unet, noise_scheduler, data, text_encoder(tokens)[0], spec.batch_size, spec.uncond_prob, generator
        ),
    )
    window = max(1, min(100, len(losses) // 5))
    return {
        "unet_seconds": seconds,
        "unet_loss_first": sum(losses[:window]) / window,
        "unet_loss_final": sum(losses[-window:]) / window,
    }


def pretrain_foundation(
    pipe: StableDiffusionPipeline,
    dataset: Dataset,
    class_names: list[str],
    spec: FoundationSpec,
    template: str = DEFAULT_TEMPLATE,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train the VAE (reconstruction) on ``dataset`` and ``spec.vae_photo_crops`` public photo crops, then the UNet
    and text encoder (noise prediction) on ``dataset``, then, for ``spec.style_steps`` > 0, on restyled copies of it
    under captions that name each style (:mod:`~warmfed_flwr.generative.style_stage`)."""
    device = device or resolve_device("auto")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images, labels = training_images(dataset, class_names, size, "foundation")
    crops = photo_crops(spec.vae_photo_crops, size, spec.seed)
    stats = {"images": len(images), "vae_photo_crops": len(crops), "steps": spec.steps, "vae_steps": spec.vae_steps,
             "device": str(device)}
    stats.update(_train_vae(pipe.vae, images, spec, device, crops))
    stats.update(train_class_stage(pipe, images, labels, class_names, spec, template, device))
    if spec.style_steps > 0:
        stats.update(train_on_styles(pipe, images, labels, class_names, spec, template, device))
        logger.info("foundation style stage: %.0f s (loss %.4f at the end)", stats["style_seconds"],
                    stats["style_loss_final"])
    logger.info(
        "foundation pretrained: VAE %.0f s (recon MSE %.4f -> %.4f), UNet+text %.0f s (loss %.4f -> %.4f)",
        stats["vae_seconds"], stats["vae_mse_first"], stats["vae_mse_final"],
        stats["unet_seconds"], stats["unet_loss_first"], stats["unet_loss_final"],
    )
    return stats
