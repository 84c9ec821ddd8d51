"""How well a generator's VAE reconstructs each client domain: what an adapter on the UNet can reach at best.

    python -m benchmarks.vae_reconstruction                       # the shipped tiny foundation
    python -m benchmarks.vae_reconstruction /path/to/diffusers/dir --images 200

Prints the mean squared error (images in [0, 1]) of encode -> decode (posterior mean) on the first ``--images``
test images of every client of the default digits benchmark (seed 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from warmfed_flwr.config import resolve
from warmfed_flwr.data import default_cache_dir, load_benchmark
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base


@torch.no_grad()
def reconstruction_mse(pipeline_dir: str, images_per_client: int, cache_dir: Path) -> dict[str, float]:
    """Per-client reconstruction MSE of the pipeline's VAE."""
    cfg = resolve({})
    pipe = load_pipeline(pipeline_dir, torch.device("cpu"), "float32")
    errors = {}
    for client in load_benchmark(cfg.data, 0, cache_dir).clients:
        images = client.test.tensors[0][:images_per_client]
        latents = pipe.vae.encode(images * 2.0 - 1.0).latent_dist.mean
        decoded = (pipe.vae.decode(latents).sample + 1.0) / 2.0
        errors[client.name] = float(((decoded.clamp(0.0, 1.0) - images) ** 2).mean())
    return errors


def main() -> None:
    """Print one line per pipeline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="*", help="diffusers directories (default: the shipped tiny foundation)")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    cache_dir = default_cache_dir()
    pipelines = args.pipelines or [resolve_base(resolve({}).generator, cache_dir)]
    for pipeline in pipelines:
        errors = reconstruction_mse(pipeline, args.images, cache_dir)
        print(f"{pipeline}: " + ", ".join(f"{name} {value:.4f}" for name, value in errors.items()))


if __name__ == "__main__":
    main()
