"""``warmfed-build-random-sd``: a Stable Diffusion 1.5 / 2.1-base pipeline with the real architecture and seeded
random weights, built from the configs shipped under ``sd_configs/`` (nothing downloaded).

Time and memory of LoRA training and sampling depend on the architecture's shapes, not on trained weights, so this
directory stands in for the hub model in GPU checks (``benchmarks/gpu_check.py``). Its images are noise: nothing
measured with it is an accuracy result. It loads through ``load_pipeline`` like any diffusers directory.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from warmfed_flwr.generative.tokenizer import build_tokenizer

SD_CONFIGS = Path(__file__).resolve().parent / "sd_configs"
ARCHS = ("sd15", "sd21base")
SD_TOKENS = 77
SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}
"""The noise schedule of SD 1.5 and SD 2.1-base (both predict epsilon), as a DDIM scheduler."""
CARD_KEY = "warmfed_random_sd"
"""The key of the model card's front matter that marks a random-weight pipeline."""


@dataclass(frozen=True)
class SdConfigs:
    """The UNet, VAE and CLIP text-encoder configs of one architecture."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]


def sd_configs(arch: str, sample_size: int | None = None) -> SdConfigs:
    """The shipped configs of ``arch`` (sd15 or sd21base); ``sample_size`` overrides the UNet's latent size (native
    64, i.e. 512 px) and the VAE's image size with it. Channels, depths and parameter counts stay the architecture's."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    unet, vae, text = (json.loads((SD_CONFIGS / arch / f"{part}.json").read_text())
                       for part in ("unet", "vae", "text_encoder"))
    if sample_size is not None:
        scale = vae["sample_size"] // unet["sample_size"]
        unet["sample_size"], vae["sample_size"] = sample_size, sample_size * scale
    return SdConfigs(unet, vae, text)


def build_random_pipeline(configs: SdConfigs, seed: int = 0) -> StableDiffusionPipeline:
    """A pipeline of ``configs`` with random weights drawn from ``seed`` (float32), a byte-level CLIP BPE tokenizer
    that pads every prompt to 77 ids within the text encoder's vocabulary, and SD's DDIM schedule."""
    tokenizer = build_tokenizer(max_length=SD_TOKENS)
    text_config = {k: v for k, v in copy.deepcopy(configs.text_encoder).items() if k != "architectures"}
    if len(tokenizer) > text_config["vocab_size"]:
        raise ValueError(f"the tokenizer's {len(tokenizer)} ids exceed the text encoder's vocabulary")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(copy.deepcopy(configs.unet))
        vae = AutoencoderKL.from_config(copy.deepcopy(configs.vae))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_random_pipeline(pipe: StableDiffusionPipeline, out: Path, card: dict[str, Any]) -> Path:
    """Write ``pipe`` (cast to float16 in place) as a diffusers directory of float16 safetensors with a model card
    (README.md) whose front matter holds ``card`` under CARD_KEY and says the weights are random, for timing only."""
    out = Path(out)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.half()
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(
        f"---\ntags: [random-weights, timing-only]\n{CARD_KEY}: {json.dumps(card, sort_keys=True)}\n---\n\n"
        f"# Random-weight Stable Diffusion ({card.get('arch', 'custom')})\n\n"
        "The architecture of the configs under warmfed_flwr/generative/sd_configs/ with seeded random weights "
        "(float16), a small byte-level CLIP BPE tokenizer (77-token prompts) and SD's DDIM schedule. For timing and "
        "memory checks only: its images are noise and nothing trained or synthesized with it is an accuracy result.\n"
    )
    return out


def random_card(directory: Path) -> dict[str, Any] | None:
    """The CARD_KEY entry of a directory's model card: what ``save_random_pipeline`` wrote; None for other models."""
    readme = Path(directory) / "README.md"
    lines = readme.read_text().splitlines() if readme.is_file() else []
    prefix = f"{CARD_KEY}: "
    return next((json.loads(line[len(prefix):]) for line in lines if line.startswith(prefix)), None)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: build and write a random-weight SD pipeline."""
    parser = argparse.ArgumentParser(prog="warmfed-build-random-sd", description="Write a Stable Diffusion 1.5 or "
                                     "2.1-base pipeline with the real architecture and seeded random weights (timing "
                                     "and memory checks only; nothing is downloaded).")
    parser.add_argument("--arch", choices=ARCHS, default="sd21base")
    parser.add_argument("--out", type=Path, required=True, help="the diffusers directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-size", type=int, default=None,
                        help="UNet latent size (images are 8x it); default the architecture's 64 (512 px)")
    args = parser.parse_args(argv)
    configs = sd_configs(args.arch, args.sample_size)
    save_random_pipeline(build_random_pipeline(configs, args.seed), args.out,
                         {"arch": args.arch, "seed": args.seed, "sample_size": configs.unet["sample_size"]})
    print(f"random-weight {args.arch} pipeline written to {args.out} (seed {args.seed}, "
          f"{configs.vae['sample_size']} px; timing only)")


if __name__ == "__main__":
    main()
