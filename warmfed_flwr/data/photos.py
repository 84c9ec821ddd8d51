"""Colour-jittered random crops of public photos that no client domain uses: natural texture and colour.

They widen what the tiny foundation can draw (colour, texture) beyond the grey public digits. The sources are
scikit-learn's two sample photos, matplotlib's sample photos and those of scikit-image's sample images that the
MNIST-M-style ``mnistm`` domain does not blend (it blends ``digits._PHOTOS``; a test keeps the two apart).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

SKIMAGE_NAMES = ("brick", "camera", "coins", "colorwheel", "grass", "gravel", "moon", "retina")
MATPLOTLIB_NAMES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
SOURCE = (
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
