"""Random crops of scikit-learn's two bundled sample photos: public natural-image texture and colour.

They widen what the tiny foundation's VAE can represent (colour, texture) beyond the grey public digits. No client
domain uses these photos: the MNIST-M-style ``mnistm`` domain blends scikit-image's sample photos instead.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_sample_images
from torch.nn import functional as F

SOURCE = "scikit-learn load_sample_images(): china.jpg and flower.jpg (427x640 RGB)"
MAX_CROP = 160


def photo_crops(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` seeded square crops (side ``size``..160 px) of the sample photos, resized to size x size, in [0,1]."""
    if count <= 0:
        return torch.empty(0, 3, size, size)
    rng = np.random.default_rng(seed)
    photos = [torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255.0  # a writable copy
              for p in load_sample_images().images]
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(size, MAX_CROP + 1))
        top = int(rng.integers(photo.shape[1] - side))
        left = int(rng.integers(photo.shape[2] - side))
        window = photo[None, :, top:top + side, left:left + side]
        crops.append(F.interpolate(window, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(crops).clamp(0.0, 1.0)
