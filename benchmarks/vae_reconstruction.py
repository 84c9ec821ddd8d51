"""How well a generator's VAE reconstructs each client domain: what an adapter on the UNet can reach at best.

    python -m benchmarks.vae_reconstruction                       # the default generator (tiny foundation)
    python -m benchmarks.vae_reconstruction /path/to/diffusers/dir --grid results/generator_figures/vae.png

Per client of the default digits benchmark (seed 0): a judge (the default CNN) trained on the client's real train
split labels its test split, before and after encode -> decode (posterior mean); the share of its accuracy it keeps,
and the reconstruction MSE (images in [0, 1]). Also the MSE of flat colours, and a grid (per domain a real row above
its reconstructed row).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch.utils.data import TensorDataset
from torchvision.utils import save_image

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import default_cache_dir, load_benchmark
from warmfed_flwr.generative.images import as_float_image
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.styles import flat_colours
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import evaluate, train_epochs

JUDGE_EPOCHS = 10
GRID_IMAGES = 8


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """encode -> decode (posterior mean) of float images [N, 3, H, W] in [0, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size] * 2.0 - 1.0
        out.append(((vae.decode(vae.encode(x).latent_dist.mean).sample + 1.0) / 2.0).clamp(0.0, 1.0))
    return torch.cat(out)


def domain_rows(vae: AutoencoderKL, cache_dir: Path) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Per client: judge accuracy on real and reconstructed test images, the share kept, the MSE; and the grid."""
    cfg = resolve({})
    rows: dict[str, dict[str, float]] = {}
    grid = []
    for client in load_benchmark(cfg.data, 0, cache_dir).clients:
        train_images, train_labels = client.train.tensors
        images, labels = client.test.tensors
        images = as_float_image(images)
        judge = seeded_model(cfg.model, 10, 0)
        train_epochs(judge, TensorDataset(train_images, train_labels), epochs=JUDGE_EPOCHS, lr=cfg.train.lr,
                     batch_size=cfg.train.batch_size, device=torch.device("cpu"), seed=0)
        rebuilt = reconstruct(vae, images)
        _, real = evaluate(judge, TensorDataset(images, labels), torch.device("cpu"))
        _, recon = evaluate(judge, TensorDataset(rebuilt, labels), torch.device("cpu"))
        rows[client.name] = {"judge_real": real, "judge_reconstructed": recon, "kept": recon / max(real, 1e-9),
                             "mse": float(((rebuilt - images) ** 2).mean())}
        grid += [images[:GRID_IMAGES], rebuilt[:GRID_IMAGES]]
    return rows, torch.cat(grid)


def flat_colour_mse(vae: AutoencoderKL, count: int = 256) -> float:
    """Round-trip MSE of seeded random flat colours at the VAE's size."""
    colours = flat_colours(count, vae.config.sample_size, torch.Generator().manual_seed(0))
    return float(((reconstruct(vae, colours) - colours) ** 2).mean())


def measure(pipeline_dir: str, cache_dir: Path, grid: Path | None) -> dict[str, Any]:
    """Every figure of one pipeline's VAE; writes the grid PNG when ``grid`` is given."""
    if (Path(pipeline_dir) / "model_index.json").is_file() or not Path(pipeline_dir).is_dir():
        vae = load_pipeline(pipeline_dir, torch.device("cpu"), "float32").vae
    else:
        vae = AutoencoderKL.from_pretrained(pipeline_dir).eval()
    rows, images = domain_rows(vae, cache_dir)
    if grid is not None:
        grid.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, str(grid), nrow=GRID_IMAGES, padding=1)
    return {"domains": rows, "flat_colour_mse": flat_colour_mse(vae)}


def markdown(pipeline_dir: str, figures: dict[str, Any]) -> str:
    """The VAE table of results/generator.md."""
    lines = [f"VAE of `{pipeline_dir}`; flat-colour round-trip MSE {figures['flat_colour_mse']:.4f}.", "",
             "| domain | judge on real test (%) | judge on reconstructions (%) | kept (%) | MSE |",
             "|---|---|---|---|---|"]
    for name, row in figures["domains"].items():
        lines.append(f"| {name} | {100 * row['judge_real']:.1f} | {100 * row['judge_reconstructed']:.1f} | "
                     f"{100 * row['kept']:.1f} | {row['mse']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    """Print the VAE table of each pipeline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="*", help="diffusers pipeline or VAE directories (default: the default "
                        "generator)")
    parser.add_argument("--grid", type=Path, default=None, help="PNG of real rows above reconstructed rows")
    args = parser.parse_args()
    cache_dir = default_cache_dir()
    pipelines = args.pipelines or [resolve_base(resolve({}).generator, cache_dir)]
    for pipeline in pipelines:
        print(markdown(pipeline, measure(pipeline, cache_dir, args.grid)))


if __name__ == "__main__":
    main()
