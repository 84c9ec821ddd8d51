"""The noise-prediction training step shared by foundation pretraining and client LoRA, and the foundation stages'
training loop.

Every random draw comes from the caller's ``torch.Generator`` in a fixed order (batch indices, latent noise,
diffusion noise, timesteps, empty-prompt coin flips), so a build repeats bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.nn import functional as F
from transformers import CLIPTextModel

from warmfed_flwr.records.progress import progress_bar


@torch.no_grad()
def encode_latent_stats(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """Posterior mean and std of every image (images in [0,1] on any device; returned on the VAE's device)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(vae.device, vae.dtype) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw from the posterior N(mean, std^2), its noise taken on the CPU from ``generator``."""
    return mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)


@dataclass(frozen=True)
class TrainingLatents:
    """The VAE posterior (mean, std) of every training image, its label and the VAE's scaling factor.

    ``captions`` (optional) gives each image its own prompt index instead of its label's (see
    :func:`noise_prediction_loss`).
    """

    mean: torch.Tensor
    std: torch.Tensor
    labels: torch.Tensor
    scaling: float
    captions: torch.Tensor | None = None

    @classmethod
    def encode(cls, vae: AutoencoderKL, images: torch.Tensor, labels: torch.Tensor) -> TrainingLatents:
        """Encode ``images`` in [0,1] with ``vae``; the stats stay on the VAE's device, the labels where they are."""
        mean, std = encode_latent_stats(vae, images)
        return cls(mean, std, labels, vae.config.scaling_factor)

    @classmethod
    def encode_batches(
        cls, vae: AutoencoderKL, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int
    ) -> TrainingLatents:
        """``encode`` of ``count`` images that arrive as (images, labels) batches, one batch in memory at a time.

        Each batch's stats are written into tensors allocated once and its labels kept as Python ints, so nothing
        else outlives a batch (small tensors kept per batch between the large transient image buffers fragment
        glibc's heap: resident memory grew by ~22 MiB per batch of eight 512 px images).
        """
        mean = std = torch.empty(0)
        labels, done = [], 0
        for images, batch_labels in batches:
            batch_mean, batch_std = encode_latent_stats(vae, images, batch_size=len(images))
            if not done:
                mean = batch_mean.new_empty((count, *batch_mean.shape[1:]))
                std = torch.empty_like(mean)
            mean[done:done + len(images)] = batch_mean
            std[done:done + len(images)] = batch_std
            labels.extend(batch_labels.tolist())
            done += len(images)
        if done != count:
            raise ValueError(f"the batches held {done} images, not the {count} announced")
        return cls(mean, std, torch.tensor(labels, dtype=torch.long), vae.config.scaling_factor)


def noise_prediction_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    data: TrainingLatents,
    prompt_states: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    uncond_prob: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    plain_prob: float = 0.0,
    empty_prompt: int | None = None,
    snr_gamma: float = 0.0,
) -> torch.Tensor:
    """MSE of the UNet's noise (or v) prediction on one random batch of ``data``.

    Prompt index ``i`` selects row ``i`` of ``prompt_states`` [P, seq, dim], or, when ``prompt_states`` is a
    function, its text encoding of prompt indices [B]. A sample's prompt is its label's (rows 0..C-1) or, when
    ``data.captions`` is set, its own caption (replaced by its label's with probability ``plain_prob``); the last
    prompt (or ``empty_prompt``), the empty one, stands in with probability ``uncond_prob``. The UNet runs under
    autocast in ``dtype`` unless that is float32; the loss is computed in float32. ``snr_gamma`` > 0 weights each
    sample by min(SNR, gamma) / SNR (min-SNR weighting; / (SNR + 1) for v-prediction), damping low-noise timesteps.
    """
    device = data.mean.device
    index = torch.randint(len(data.mean), (batch_size,), generator=generator)
    on_device = index.to(device)
    latents = sample_latents(data.mean[on_device], data.std[on_device], generator) * data.scaling
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
    prompt_index = data.labels[index].clone()
    if data.captions is not None:
        plain = torch.rand(batch_size, generator=generator) < plain_prob
        prompt_index = torch.where(plain, prompt_index, data.captions[index])
    empty = len(prompt_states) - 1 if empty_prompt is None else empty_prompt
    prompt_index[torch.rand(batch_size, generator=generator) < uncond_prob] = empty
    noisy = scheduler.add_noise(latents, noise, timesteps)
    velocity = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
    on_prompts = prompt_index.to(device)
    encoded = prompt_states(on_prompts) if callable(prompt_states) else prompt_states[on_prompts]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = unet(noisy.to(dtype), timesteps, encoder_hidden_states=encoded).sample
    if snr_gamma <= 0:
        return F.mse_loss(prediction.float(), target.float())
    alphas = scheduler.alphas_cumprod.to(device)[timesteps]
    snr = alphas / (1.0 - alphas)
    weight = snr.clamp(max=snr_gamma) / (snr + 1.0 if velocity else snr)
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def train_unet_and_text(
    pipe: StableDiffusionPipeline,
    device: torch.device,
    steps: int,
    lr: float,
    warmup_steps: int,
    desc: str,
    step_loss: Callable[[UNet2DConditionModel, CLIPTextModel], torch.Tensor],
) -> tuple[list[float], float]:
    """Train ``pipe``'s UNet and text encoder jointly for ``steps`` AdamW steps (cosine schedule with warmup, gradient
    norm clipped at 1) on ``step_loss(unet, text_encoder)``, then freeze both; the losses and the seconds taken."""
    unet, text_encoder = pipe.unet.to(device).train(), pipe.text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, steps), steps)
    losses: list[float] = []
    start = time.perf_counter()
    bar = progress_bar(range(steps), desc=desc, unit="step")
    for _ in bar:
        loss = step_loss(unet, text_encoder)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return losses, time.perf_counter() - start
