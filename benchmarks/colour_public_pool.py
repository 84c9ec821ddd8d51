"""The public digits recoloured, as an ImageFolder foundation source: does a colour prior let adapters carry a domain?

Writes ``OUT/<class>/<index>.png`` from the 2,000 public MNIST digits that pretrain the shipped foundation (no client
image): a third kept grey, a third with a random flat foreground and background colour, a third with a random
foreground colour over a crop of scikit-learn's sample photos (the crops the VAE already learns). Build a foundation
from it and score the adapters it gives with `benchmarks.diagnose_lora`:

    python -m benchmarks.colour_public_pool --out /tmp/colour_pool
    warmfed-build-foundation --steps 8000 --source /tmp/colour_pool
    python -m benchmarks.diagnose_lora --set generator.foundation-source=/tmp/colour_pool \\
        generator.foundation-steps=8000 --only "no adapter (FGL)" default --out results/diagnose_lora_colour.md

A 2,000-step build is too short to test anything: on its own holdout it reached class fidelity 19.6 % and
train-on-synthetic 22.0 % (train-on-real 86.8 %), 1,005 s on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from warmfed_flwr.data import default_cache_dir
from warmfed_flwr.data.digits import CLASS_NAMES, load_public
from warmfed_flwr.data.photos import photo_crops


def recoloured(images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 [N,S,S,3] grey digits -> a third grey, a third flat colours, a third over photo crops."""
    rng = np.random.default_rng(seed)
    ink = images.astype(np.float32).mean(axis=3, keepdims=True) / 255.0
    size = images.shape[1]
    crops = photo_crops(len(images), size, seed).permute(0, 2, 3, 1).numpy()
    out = images.astype(np.float32) / 255.0
    for i in range(len(images)):
        mode = i % 3
        if mode == 0:
            continue
        foreground = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        background = rng.uniform(0.0, 1.0, size=3).astype(np.float32) if mode == 1 else crops[i]
        if mode == 1 and np.abs(foreground - background).sum() < 0.6:
            background = 1.0 - foreground
        out[i] = background * (1.0 - ink[i]) + foreground * ink[i]
    return (out.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def main() -> None:
    """Write the recoloured public pool as an ImageFolder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    public = load_public(args.image_size, default_cache_dir())
    images = recoloured(public.images, args.seed)
    for index, (image, label) in enumerate(zip(images, public.labels, strict=True)):
        folder = args.out / CLASS_NAMES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    print(f"wrote {len(images)} images to {args.out}")


if __name__ == "__main__":
    main()
