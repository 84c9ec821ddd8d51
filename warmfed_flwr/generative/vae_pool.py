"""What the tiny foundation's VAE learns to reconstruct beyond the styled public pool: flat colours, gradients,
random shapes and public photo crops, so it can decode colours and textures that no pool image shows."""

from __future__ import annotations

import torch


def flat_colours(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3, S, S] uniform random flat colours."""
    return torch.rand(count, 3, 1, 1, generator=generator).expand(count, 3, size, size).clone()


def gradients(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 3, S, S] linear ramps between two random colours along random directions."""
    start, end = torch.rand(2, count, 3, 1, 1, generator=generator)
    angle = torch.rand(count, 1, 1, generator=generator) * 6.2832
    axis = torch.linspace(-1.0, 1.0, size)
    ramp = torch.cos(angle) * axis.view(1, 1, -1) + torch.sin(angle) * axis.view(1, -1, 1)
    low, high = ramp.amin((1, 2), keepdim=True), ramp.amax((1, 2), keepdim=True)
    ramp = ((ramp - low) / (high - low)).unsqueeze(1)
    return start * (1 - ramp) + end * ramp


def random_shapes(count: int, size: int, generator: torch.Generator, shapes: int = 4) -> torch.Tensor:
    """[count, 3, S, S] random-coloured rectangles and ellipses (1..``shapes`` each) on a random flat colour."""
    out = flat_colours(count, size, generator)
    grid = torch.linspace(0.0, 1.0, size)
    ys, xs = grid.view(1, -1, 1), grid.view(1, 1, -1)
    for _ in range(shapes):
        centre = torch.rand(count, 2, 1, 1, generator=generator)
        radius = 0.05 + 0.35 * torch.rand(count, 2, 1, 1, generator=generator)
        dy = (ys - centre[:, 0]) / radius[:, 0]
        dx = (xs - centre[:, 1]) / radius[:, 1]
        ellipse = torch.rand(count, 1, 1, generator=generator) < 0.5
        inside = torch.where(ellipse, dy**2 + dx**2 <= 1.0, (dy.abs() <= 1.0) & (dx.abs() <= 1.0))
        present = torch.rand(count, 1, 1, generator=generator) < 0.75
        colour = torch.rand(count, 3, 1, 1, generator=generator)
        mask = (inside & present).unsqueeze(1)
        out = torch.where(mask, colour.expand_as(out), out)
    return out


def vae_extras(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` images of each kind (flat colours, gradients, random shapes), seeded, float in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([flat_colours(count, size, generator), gradients(count, size, generator),
                      random_shapes(count, size, generator)])
