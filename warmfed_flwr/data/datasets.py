"""Client datasets: uint8 image arrays (in memory or memory-mapped) and lazily decoded image files, yielded as
float32 [3,S,S] in [0,1] with int64 labels; a client's split and the benchmark of every client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from warmfed_flwr.data.partition import DomainArrays
from warmfed_flwr.errors import DataError


class ImageArrayDataset(Dataset):
    """uint8 [N,S,S,3] images (in memory or memory-mapped) and int64 labels; item i is (float32 [3,S,S] in [0,1],
    int64 label), exactly ``image / 255`` as a float TensorDataset of the same images would give it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise ValueError(f"need uint8 [N,S,S,3] images and N labels, got {images.dtype} {images.shape} images and "
                             f"{len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1).contiguous().float().div_(255.0)
        return image, torch.tensor(self.labels[index], dtype=torch.int64)

    def float_images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` as one float32 [n,3,S,S] tensor in [0,1]."""
        chunk = torch.from_numpy(np.array(self.images[start:stop]))
        return chunk.permute(0, 3, 1, 2).float().div_(255.0).contiguous()

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 [N,3,S,S] images in [0,1], int64 labels) as a TensorDataset holds them: a full float copy, for
        small data (tests, diagnostics); training reads items instead."""
        return self.float_images(), torch.from_numpy(np.array(self.labels, dtype=np.int64))


class ImageFileDataset(Dataset):
    """Image files decoded lazily as RGB at their own resolution: item i is (float32 [3,H,W] in [0,1], int64 label)."""

    def __init__(self, paths: list[str], labels: np.ndarray) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image files but {len(labels)} labels")
        self.paths = paths
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"image file {self.paths[index]} cannot be read ({type(exc).__name__}: {exc}); restore it, "
                            "or delete <cache-dir>/clients to partition the data again") from exc
        return (torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div_(255.0),
                torch.tensor(self.labels[index], dtype=torch.int64))


@dataclass
class ClientSplit:
    """One client's private data (train and test as ``ImageArrayDataset`` or any (image, label) dataset).

    ``native_train`` holds the same train images, in the same order, at their original resolution (for the
    generator's LoRA): an ``ImageFileDataset`` for an ImageFolder tree, None for digits (no larger originals) and,
    for now, for the other sources.
    """

    name: str
    domain: str
    train: Dataset
    test: Dataset
    native_train: Dataset | None = None


@dataclass
class Benchmark:
    """The class names (words used in prompts) and the clients, indexed by Flower partition id."""

    class_names: list[str]
    clients: list[ClientSplit]


def as_tensor_dataset(arrays: DomainArrays) -> TensorDataset:
    """uint8 [N,S,S,3] images and labels as a TensorDataset of float32 [N,3,S,S] in [0,1] and int64 [N]."""
    images = torch.from_numpy(np.ascontiguousarray(arrays.images)).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.from_numpy(np.ascontiguousarray(arrays.labels, dtype=np.int64))
    return TensorDataset(images.contiguous(), labels)
