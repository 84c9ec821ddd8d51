"""Labelled image tensors for the generator: from a dataset, checked against the class names, resized."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from warmfed_flwr.errors import GeneratorError

IMAGE_BATCH = 256
"""Most images ``training_batches`` reads, resizes and hands on at once."""
BATCH_PIXELS = 8 * 512 * 512
"""Pixel budget of one batch at the generator's native size (8 images at 512 px), bounding host and VAE memory."""
EMPTY = "the training image set is empty; give the generator at least one image per class"


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """An image tensor as float in [0,1]: uint8 (0..255) is divided by 255, any other dtype is cast to float32."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def dataset_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float [N,3,H,W] in [0,1], labels int64 [N]) of a TensorDataset or any (x, y) dataset."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0], dataset.tensors[1]
    else:
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        images = torch.stack([x for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs])
    if len(images) == 0:
        raise GeneratorError(EMPTY)
    return as_float_image(images), labels.long()


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N,3,H,W] images to size x size (no-op when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).clamp(0.0, 1.0)


def check_labels(labels: torch.Tensor, class_names: list[str], purpose: str) -> None:
    """Raise GeneratorError unless every label indexes ``class_names`` (``purpose`` names the images in the error)."""
    if int(labels.max()) >= len(class_names) or int(labels.min()) < 0:
        raise GeneratorError(
            f"{purpose} labels span {int(labels.min())}..{int(labels.max())} but {len(class_names)} class names "
            "were given; give one name per label"
        )


def training_images(
    dataset: Dataset, class_names: list[str], size: int, purpose: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dataset_tensors`` resized to ``size``, after checking each label names a class (``purpose`` in errors)."""
    images, labels = dataset_tensors(dataset)
    check_labels(labels, class_names, purpose)
    return resize_to(images, size), labels


def batch_limit(size: int) -> int:
    """Images per batch at ``size`` px: ``IMAGE_BATCH``, fewer where ``BATCH_PIXELS`` is reached first (at least 1)."""
    return max(1, min(IMAGE_BATCH, BATCH_PIXELS // (size * size)))


def training_batches(
    dataset: Dataset, class_names: list[str], size: int, purpose: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``dataset`` in order as (images float [B,3,size,size] in [0,1], labels int64 [B]), B <= ``batch_limit(size)``.

    Items are (image, label) pairs, the image float [3,H,W] in [0,1] or uint8 [3,H,W], H and W free per item; each
    image is resized to ``size`` on its own and each batch's labels are checked against ``class_names``. Only one
    batch is held at a time, so memory does not grow with the dataset.
    """
    count = len(dataset)  # type: ignore[arg-type]
    if count == 0:
        raise GeneratorError(EMPTY)
    step = batch_limit(size)
    for start in range(0, count, step):
        pairs = [dataset[i] for i in range(start, min(start + step, count))]
        images = torch.stack([resize_to(as_float_image(x)[None], size)[0] for x, _ in pairs])
        labels = torch.as_tensor([int(y) for _, y in pairs], dtype=torch.long)
        check_labels(labels, class_names, purpose)
        yield images, labels
