"""Samples of a saved foundation under style phrases: one row per phrase, one column per class.

    python -m benchmarks.style_grid /tmp/curriculum --out results/generator_figures/curriculum_samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from warmfed_flwr.data.digits import CLASS_NAMES
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE, class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import quantize, synthesize

PHRASES = ("", "white on black", "black on white", "red on blue", "yellow on green", "white on a gradient",
           "white on a photo", "textured on a photo", "white on black, thick, blurry")


def main() -> None:
    """Draw the grid and save it as a PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("foundation", help="a diffusers directory or hub id")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phrases", nargs="*", default=list(PHRASES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = load_pipeline(args.foundation, torch.device("cpu"))
    rows = []
    for phrase in args.phrases:
        embeddings = prompt_embeddings(pipe, class_prompts(DEFAULT_TEMPLATE, CLASS_NAMES, phrase))
        images, _ = synthesize(pipe, embeddings, 1, args.steps, args.guidance, 64, args.seed)
        rows.append(torch.cat(list(images), dim=2))
    grid = quantize(torch.cat(rows, dim=1)).transpose(1, 2, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.out)
    print(f"rows (top to bottom): {[phrase or '(plain class prompt)' for phrase in args.phrases]}")


if __name__ == "__main__":
    main()
