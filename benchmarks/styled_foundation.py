"""Candidate 'styled' foundation: a VAE that keeps colours and a style-captioned prior, from scratch or class first
(not the default; the shipped foundation learns classes first, then styles, with its 4-channel VAE).

    python -m benchmarks.styled_foundation --out /tmp/styled-foundation            # from scratch (measured)
    python -m benchmarks.styled_foundation --out /tmp/curriculum8 --class-steps 8000 --steps 4000 --lr 3e-4
                                                                      # classes first, then styles, on the 8-ch VAE
    python -m benchmarks.styled_foundation --out /tmp/curriculum8w --class-steps 8000 --steps 4000 --lr 3e-4 \
        --unet-channels 64 128 --vae-from /tmp/curriculum8                # the same with a 4x wider UNet, same VAE
    python -m benchmarks.vae_reconstruction /tmp/styled-foundation                  # its VAE per client domain

Against the shipped tiny foundation it changes: the VAE (8 x 16 x 16 latents, channels 32/64, two layers per block,
L1 + MSE, 3,000 steps) reconstructs the styled pool plus colour-jittered crops of every allowed public photo, flat
colours, gradients and random shapes (warmfed_flwr/generative/styles.py); the UNet (8 latent channels) and a wider text
encoder (64) learn the public digits under generic style randomisation, each prompt naming its style in words
("a photo of a seven, red on blue, blurry"; 20 % plain class prompts, 10 % empty), with style words as single
tokens. With ``--class-steps`` the UNet and text encoder first learn the plain class prompts (the shipped class stage,
style words not yet in the tokenizer), then the styles (the shipped style stage). Its quality is measured on the public
holdout under the holdout's own style phrase ('white on black').
results/findings.md holds what it measured; it is not shipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.nn import functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from warmfed_flwr.data import default_cache_dir, load_public_pool
from warmfed_flwr.generative.diffusion import encode_latent_stats, sample_latents
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.foundation_training import train_class_stage
from warmfed_flwr.generative.images import dataset_tensors, training_images
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE
from warmfed_flwr.generative.quality import foundation_quality, split_holdout
from warmfed_flwr.generative.style_stage import train_on_styles
from warmfed_flwr.generative.styles import WORDS, photo_crops, source_phrase, stylise, vae_extras
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline
from warmfed_flwr.generative.tokenizer import MAX_TOKENS, VOCABULARY, build_tokenizer


@dataclasses.dataclass(frozen=True)
class StyledSpec:
    """The candidate recipe."""

    steps: int = 8000
    class_steps: int = 0
    class_lr: float = 1e-3
    vae_steps: int = 3000
    style_copies: int = 6
    photo_crops: int = 2000
    vae_extra_images: int = 1000
    latent_channels: int = 8
    unet_channels: tuple[int, int] = (32, 64)
    text_width: int = 64
    lr: float = 1e-3
    vae_lr: float = 2e-3
    batch_size: int = 32
    plain_prob: float = 0.2
    uncond_prob: float = 0.1
    warmup_steps: int = 50
    seed: int = 0


def styled_pipeline(spec: StyledSpec) -> StableDiffusionPipeline:
    """The tiny pipeline with ``spec``'s latent channels, a wider text encoder and, unless a class stage comes first
    (the style stage then adds them), the style words as tokens."""
    base = build_tiny_pipeline(spec.seed)
    tokenizer = base.tokenizer if spec.class_steps else build_tokenizer([*VOCABULARY, *WORDS])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=2,
                            latent_channels=spec.latent_channels, norm_num_groups=8, sample_size=32,
                            mid_block_add_attention=False)
        unet = UNet2DConditionModel(**{**base.unet.config, "in_channels": spec.latent_channels,
                                       "out_channels": spec.latent_channels, "cross_attention_dim": spec.text_width,
                                       "block_out_channels": spec.unet_channels})
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=spec.text_width, intermediate_size=2 * spec.text_width,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_vae(vae: AutoencoderKL, images: torch.Tensor, spec: StyledSpec) -> dict[str, Any]:
    """L1 + MSE reconstruction training, then scaling_factor = 1 / std of the latents."""
    generator = torch.Generator().manual_seed(spec.seed)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=spec.vae_lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, spec.warmup_steps, spec.vae_steps)
    started = time.perf_counter()
    for _ in range(spec.vae_steps):
        x = images[torch.randint(len(images), (spec.batch_size,), generator=generator)] * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(sample_latents(posterior.mean, posterior.std, generator)).sample
        loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    scaling = 1.0 / sample_latents(*encode_latent_stats(vae, images), generator).std().item()
    vae.register_to_config(scaling_factor=scaling)
    return {"vae_seconds": time.perf_counter() - started, "vae_scaling_factor": scaling}


def main() -> None:
    """Build the candidate into ``--out`` and print its quality on the public holdout."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=StyledSpec().steps)
    parser.add_argument("--vae-steps", type=int, default=StyledSpec().vae_steps)
    parser.add_argument("--lr", type=float, default=StyledSpec().lr)
    parser.add_argument("--class-steps", type=int, default=StyledSpec().class_steps,
                        help="steps of a class stage before the styles (0 = styles from scratch)")
    parser.add_argument("--unet-channels", type=int, nargs=2, default=StyledSpec().unet_channels,
                        help="the UNet's two block widths")
    parser.add_argument("--vae-from", type=Path, help="reuse the VAE of a candidate built before (no VAE training)")
    args = parser.parse_args()
    spec = StyledSpec(steps=args.steps, vae_steps=args.vae_steps, lr=args.lr, class_steps=args.class_steps,
                      unet_channels=tuple(args.unet_channels))
    pool, class_names = load_public_pool("digits", 32, default_cache_dir())
    train, holdout = split_holdout(pool, 0.2, spec.seed)
    images, labels = training_images(train, class_names, 32, "foundation")
    pipe = styled_pipeline(spec)
    if args.vae_from:
        pipe.vae = AutoencoderKL.from_pretrained(args.vae_from / "vae").eval().requires_grad_(False)
        if pipe.vae.config.latent_channels != spec.latent_channels:
            parser.error(f"--vae-from {args.vae_from} has {pipe.vae.config.latent_channels} latent channels, the "
                         f"UNet {spec.latent_channels}: give a candidate built with {spec.latent_channels}")
        stats: dict[str, Any] = {"vae_from": str(args.vae_from)}
    else:
        styled = stylise(images, labels, photo_crops(spec.photo_crops, 32, spec.seed), spec.style_copies, spec.seed)
        stats = train_vae(pipe.vae, torch.cat([styled.images, photo_crops(spec.photo_crops, 32, spec.seed + 1),
                                               vae_extras(spec.vae_extra_images, 32, spec.seed)]), spec)
    record: dict[str, Any] = {"spec": dataclasses.asdict(spec), "training": stats}
    stage = FoundationSpec(style_steps=spec.steps, style_lr=spec.lr, style_copies=spec.style_copies,
                           style_photo_crops=spec.photo_crops, style_plain_prob=spec.plain_prob,
                           uncond_prob=spec.uncond_prob, warmup_steps=spec.warmup_steps, batch_size=spec.batch_size,
                           seed=spec.seed)

    def holdout_quality(phrase: str = "") -> dict[str, Any]:
        """The model card's quality figures on the public holdout, prompts carrying ``phrase``."""
        return foundation_quality(pipe, train, class_names, DEFAULT_TEMPLATE, holdout, 50, 10, 3.0, spec.seed,
                                  torch.device("cpu"), domain_phrase=phrase)

    if spec.class_steps:
        stats.update(train_class_stage(pipe, images, labels, class_names,
                                       dataclasses.replace(stage, steps=spec.class_steps, lr=spec.class_lr),
                                       DEFAULT_TEMPLATE, torch.device("cpu")))
        record["class_stage_plain_prompt_quality"] = holdout_quality()
        print(json.dumps({"class_stage_plain": record["class_stage_plain_prompt_quality"]["class_fidelity_mean"]}),
              flush=True)
    stats.update(train_on_styles(pipe, images, labels, class_names, stage, DEFAULT_TEMPLATE, torch.device("cpu")))
    phrase = source_phrase(dataset_tensors(holdout)[0])
    quality = holdout_quality(phrase)
    pipe.save_pretrained(args.out, safe_serialization=True)
    plain = holdout_quality()
    record.update(quality=quality, plain_prompt_quality=plain)
    (args.out / "styled_record.json").write_text(json.dumps(record, indent=2))
    keys = ("class_fidelity_mean", "train_synthetic_test_real_acc", "train_real_test_real_acc", "domain_phrase")
    print(json.dumps({"style_phrase": {k: quality[k] for k in keys}, "plain": {k: plain[k] for k in keys}}))


if __name__ == "__main__":
    main()
