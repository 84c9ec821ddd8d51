"""A tiny pipeline with Stable Diffusion's shapes and module names, built from configs alone (nothing downloaded).

VAE scale factor 8 (four encoder blocks), a 77-token CLIP text encoder whose hidden size is the UNet's
cross-attention width (768 as SD 1.5, 1024 as SD 2.1), and a native image size above the classifier's, with
channel counts small enough to run on a CPU in seconds.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from warmfed_flwr.generative.random_sd import SdConfigs, sd_configs
from warmfed_flwr.generative.tokenizer import build_tokenizer

SD_TOKENS = 77


def build_sd_shaped_pipeline(
    seed: int = 0, cross_attention_dim: int = 768, image_size: int = 64
) -> StableDiffusionPipeline:
    """An untrained SD-shaped pipeline for ``image_size`` px RGB images (latents of ``image_size // 8``)."""
    tokenizer = build_tokenizer(max_length=SD_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=image_size,
            mid_block_add_attention=False,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=cross_attention_dim,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=8,
                max_position_embeddings=SD_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


NARROW_SD = {
    "unet": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
             "cross_attention_dim": 64, "attention_head_dim": [2, 2, 4, 4]},
    "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
    "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4},
}
"""Overrides that keep SD 2.1-base's block layout, vocabulary and 77 positions with CPU-sized channels and depth."""


def narrow_sd_configs(sample_size: int = 4) -> SdConfigs:
    """SD 2.1-base's shipped configs (``random_sd.sd_configs``) at ``sample_size`` with :data:`NARROW_SD` applied."""
    configs = sd_configs("sd21base", sample_size)
    return SdConfigs(**{part: {**getattr(configs, part), **NARROW_SD[part]} for part in NARROW_SD})
