"""Labelled image tensors for the generator: from a dataset, checked against the class names, resized."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from warmfed_flwr.errors import GeneratorError


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N,3,H,W] in [0,1], labels int64 [N]) of a TensorDataset or any (x, y) dataset."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        images = torch.stack([x for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    if len(images) == 0:
        raise GeneratorError("the training image set is empty; give the generator at least one image per class")
    return images.float(), labels.long()


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N,3,H,W] images to size x size (no-op when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0.0, 1.0)


def training_images(
    dataset: Dataset, class_names: list[str], size: int, purpose: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dataset_tensors`` resized to ``size``, after checking each label names a class (``purpose`` in errors)."""
    images, labels = dataset_tensors(dataset)
    if int(labels.max()) >= len(class_names) or int(labels.min()) < 0:
        raise GeneratorError(
            f"{purpose} labels span {int(labels.min())}..{int(labels.max())} but {len(class_names)} class names "
            "were given; give one name per label"
        )
    return resize_to(images, size), labels
