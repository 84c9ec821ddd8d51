"""Generic style randomisation of a public pool, with captions that name the style: the tiny foundation's style stage.

- Public photos that no client domain uses, colour-jittered: scikit-learn's two sample photos, matplotlib's sample
  photos and those of scikit-image's sample images that the MNIST-M-style ``mnistm`` domain does not blend.
- Generic style randomisation with captions that name the style in words: each image's luminance becomes an ink
  mask and the image is redrawn in a seeded style (kept, inverted, a flat foreground on a flat, gradient or photo
  background, or textured strokes), optionally thickened, blurred or made noisy; the caption ("red on blue,
  blurry") names colours from the drawn pixels, so the text encoder learns words that steer style. Nothing here
  knows a client domain: it applies to any ImageFolder pool (``generator.foundation-source``).
- What the VAE reconstructs beyond the styled pool: flat colours, gradients and random shapes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

SKIMAGE_NAMES = ("brick", "camera", "coins", "colorwheel", "grass", "gravel", "moon", "retina")
MATPLOTLIB_NAMES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
PHOTO_SOURCES = (
    "scikit-learn load_sample_images() (china.jpg, flower.jpg); matplotlib sample_data "
    f"({', '.join(MATPLOTLIB_NAMES)}); scikit-image data ({', '.join(SKIMAGE_NAMES)}); every crop colour-jittered "
    "(channel order, per-channel gain, inversion)"
)
MAX_CROP = 160


def _rgb(image: np.ndarray) -> torch.Tensor:
    """A uint8/bool/float image (grey, RGB or RGBA) as float [3, H, W] in [0, 1]."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = np.ascontiguousarray(array[..., :3])
    scale = 255.0 if array.dtype == np.uint8 else float(max(array.max(), 1.0))
    return torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1)


@functools.lru_cache(maxsize=1)
def public_photos() -> tuple[torch.Tensor, ...]:
    """Every source photo as float [3, H, W] in [0, 1] (loaded once per process)."""
    import matplotlib
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [_rgb(p) for p in load_sample_images().images]
    sample_data = matplotlib.get_data_path() + "/sample_data/"
    photos += [_rgb(np.asarray(Image.open(sample_data + name).convert("RGB"))) for name in MATPLOTLIB_NAMES]
    photos += [_rgb(getattr(skimage.data, name)()) for name in SKIMAGE_NAMES]
    return tuple(photos)


def photo_crops(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` seeded, colour-jittered square crops (side ``size``..160 px) of the public photos, resized to
    size x size, in [0,1]."""
    if count <= 0:
        return torch.empty(0, 3, size, size)
    rng = np.random.default_rng(seed)
    photos = public_photos()
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(size, min(MAX_CROP, *photo.shape[1:]) + 1))
        top = int(rng.integers(photo.shape[1] - side + 1))
        left = int(rng.integers(photo.shape[2] - side + 1))
        window = photo[None, :, top:top + side, left:left + side]
        crop = F.interpolate(window, size=(size, size), mode="bilinear", antialias=True)[0]
        gain = torch.from_numpy(rng.uniform(0.6, 1.4, 3)).float().view(3, 1, 1)
        crop = crop[torch.from_numpy(rng.permutation(3))] * gain
        if rng.random() < 0.3:
            crop = 1.0 - crop
        crops.append(crop.clamp(0.0, 1.0))
    return torch.stack(crops)


PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.65, 0.2), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.9, 0.1), "orange": (1.0, 0.55, 0.0),
    "purple": (0.55, 0.2, 0.75), "pink": (1.0, 0.6, 0.75), "brown": (0.5, 0.3, 0.1), "cyan": (0.1, 0.8, 0.85),
}
"""The colour names captions use; a drawn colour is named by its nearest entry."""
WORDS = (*PALETTE, "on", "a", "photo", "gradient", "textured", "thick", "blurry", "noisy")
"""Every word a style caption can hold (the tokenizer makes each one token)."""
MODES = ("kept", "inverted", "flat", "gradient", "photo", "textured")
MODE_WEIGHTS = (0.15, 0.1, 0.3, 0.15, 0.15, 0.15)
THICK, BLUR, NOISE = 0.2, 0.15, 0.1
"""Probabilities of the independent modifiers."""
_PALETTE = torch.tensor(list(PALETTE.values()))
_NAMES = list(PALETTE)


@dataclass(frozen=True)
class StyledPool:
    """Restyled images float [N, 3, S, S] in [0, 1], their source labels and one style phrase per image."""

    images: torch.Tensor
    labels: torch.Tensor
    phrases: list[str]


def colour_name(rgb: torch.Tensor) -> str:
    """The palette name nearest to an RGB colour in [0, 1]."""
    return _NAMES[int(((_PALETTE - rgb.float()) ** 2).sum(1).argmin())]


def ink_mask(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, S, S] luminance stretched to [0, 1] per image, flipped where the border is brighter than the centre
    (so the ink of dark-on-light images is 1 too)."""
    luminance = images.mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    low = luminance.amin((2, 3), keepdim=True)
    high = luminance.amax((2, 3), keepdim=True)
    ink = (luminance - low) / (high - low).clamp_min(1e-6)
    border = torch.cat([ink[..., 0, :], ink[..., -1, :], ink[..., :, 0], ink[..., :, -1]], -1).mean(-1)
    flip = (border > ink.mean((2, 3))).view(-1, 1, 1, 1)
    return torch.where(flip, 1.0 - ink, ink)


def _pick_colour(generator: torch.Generator, avoid: torch.Tensor | None = None) -> torch.Tensor:
    """A palette colour with a small jitter, at least 0.5 (L1, per channel mean) away from ``avoid``."""
    while True:
        base = _PALETTE[int(torch.randint(len(_PALETTE), (1,), generator=generator))]
        colour = (base + (torch.rand(3, generator=generator) - 0.5) * 0.16).clamp(0.0, 1.0)
        if avoid is None or (colour - avoid).abs().mean() > 0.3:
            return colour


def _gradient(size: int, generator: torch.Generator, fg: torch.Tensor) -> torch.Tensor:
    """[3, S, S] linear ramp between two palette colours along a random direction, both far from ``fg``."""
    start, end = _pick_colour(generator, fg), _pick_colour(generator, fg)
    angle = float(torch.rand(1, generator=generator)) * 6.2832
    axis = torch.linspace(-1.0, 1.0, size)
    ramp = torch.cos(torch.tensor(angle)) * axis[None, :] + torch.sin(torch.tensor(angle)) * axis[:, None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    return start.view(3, 1, 1) * (1 - ramp) + end.view(3, 1, 1) * ramp


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one [3, S, S] image (reflect padding)."""
    radius = max(1, int(round(2 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return x[0]


def stylise(images: torch.Tensor, labels: torch.Tensor, textures: torch.Tensor, copies: int,
            seed: int) -> StyledPool:
    """``copies`` seeded restyled versions of every image (float [N, 3, S, S] in [0, 1]), textures from
    ``textures`` [M, 3, S, S] (public photo crops); captions name each drawn style."""
    generator = torch.Generator().manual_seed(seed)
    size = images.shape[-1]
    out, phrases = [], []
    ink_all = ink_mask(images)
    for copy in range(copies):
        for index in range(len(images)):
            source, ink = images[index], ink_all[index]
            mode = MODES[int(torch.multinomial(torch.tensor(MODE_WEIGHTS), 1, generator=generator))]
            if copy == 0 and index % 2 == 0:
                mode = "kept"
            words: list[str] = []
            if torch.rand(1, generator=generator) < THICK:
                ink = F.max_pool2d(ink[None], 3, stride=1, padding=1)[0]
                words.append("thick")
            texture = textures[int(torch.randint(len(textures), (1,), generator=generator))]
            if mode == "kept":
                drawn = source if not words else source * 0 + ink
            elif mode == "inverted":
                drawn = 1.0 - (source if not words else ink.expand(3, -1, -1))
            else:
                fg = _pick_colour(generator)
                if mode == "flat":
                    background = _pick_colour(generator, fg).view(3, 1, 1).expand(3, size, size)
                elif mode == "gradient":
                    background = _gradient(size, generator, fg)
                elif mode == "photo":
                    background = texture
                else:
                    background = _pick_colour(generator, fg).view(3, 1, 1).expand(3, size, size)
                    other = textures[int(torch.randint(len(textures), (1,), generator=generator))]
                    if torch.rand(1, generator=generator) < 0.5:
                        background = other
                    fg_image = 1.0 - texture
                    drawn = background * (1 - ink) + fg_image * ink
                if mode != "textured":
                    drawn = background * (1 - ink) + fg.view(3, 1, 1) * ink
            drawn = drawn.clamp(0.0, 1.0)
            phrase = _describe(drawn, ink, mode)
            if torch.rand(1, generator=generator) < BLUR:
                drawn = _blur(drawn, 0.6 + 0.6 * float(torch.rand(1, generator=generator)))
                words.append("blurry")
            if torch.rand(1, generator=generator) < NOISE:
                drawn = (drawn + 0.08 * torch.randn(drawn.shape, generator=generator)).clamp(0.0, 1.0)
                words.append("noisy")
            out.append(drawn)
            phrases.append(", ".join([phrase, *words]))
    return StyledPool(torch.stack(out), labels.repeat(copies), phrases)


def _describe(drawn: torch.Tensor, ink: torch.Tensor, mode: str) -> str:
    """'<fg> on <bg>' from the drawn pixels, 'on a photo' / 'on a gradient' for those backgrounds, 'textured'
    for textured strokes."""
    stroke_pixels, background_pixels = ink[0] > 0.6, ink[0] < 0.2
    fg = drawn[:, stroke_pixels].mean(1) if stroke_pixels.any() else drawn.mean((1, 2))
    bg = drawn[:, background_pixels].mean(1) if background_pixels.any() else drawn.mean((1, 2))
    stroke = "textured" if mode == "textured" else colour_name(fg)
    if mode == "gradient":
        return f"{stroke} on a gradient"
    if mode == "photo" or (mode == "textured" and bg.numel() and _is_textured(drawn, ink)):
        return f"{stroke} on a photo"
    return f"{stroke} on {colour_name(bg)}"


def source_phrase(images: torch.Tensor) -> str:
    """The most common style phrase of unrestyled ``images`` [N, 3, S, S] (e.g. 'white on black' for MNIST): the
    prompt phrase under which the foundation draws images like its source pool."""
    inks = ink_mask(images)
    phrases = [_describe(image, ink, "kept") for image, ink in zip(images, inks, strict=True)]
    return max(sorted(set(phrases)), key=phrases.count)


def _is_textured(drawn: torch.Tensor, ink: torch.Tensor) -> bool:
    """Whether the background (ink < 0.5) varies like a photo rather than a flat colour."""
    background = drawn[:, ink[0] < 0.5]
    return bool(background.numel() and background.std(1).mean() > 0.05)


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
