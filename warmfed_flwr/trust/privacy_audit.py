"""Client-side privacy audit of the synthetic images the server made from this client's round-0 upload.

Per space (pixels; optionally the classifier's penultimate features) each synthetic image's nearest distance to the
client's private train images is compared with its nearest distance to the held-out test images. The train reference
is a seeded subsample of the same size as the test reference, so without memorisation a synthetic image is as likely
to lie closer to either: ``closer_to_train_share`` near 0.5 shows no sign of memorisation, near 1 shows copies.
``near_copy_share`` counts synthetic images closer to some train image (any of them) than 95% of the real test images
are (about 0.05 without memorisation). Only the scalars leave the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from warmfed_flwr.data import ImageArrayDataset

Images = np.ndarray | torch.Tensor | Dataset
"""uint8 [N,H,W,3] images (array or tensor), float [N,3,H,W] images in [0, 1], or an (image, label) dataset."""
FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""Float [n,3,H,W] images in [0, 1] -> [n, d] features."""
Chunks = Callable[[], Iterator[torch.Tensor]]
"""A re-iterable set of embedded images: each call yields its float32 [n, d] chunks again."""

NEAR_COPY_PERCENTILE = 5.0
"""A synthetic image is a near-copy when its distance to the nearest train image (of all of them) is below this
percentile of the real test images' such distances (so independent draws from the client's distribution give 5%)."""
CHUNK = 256
"""Images per chunk: distances are computed for CHUNK x CHUNK pairs at a time."""


@dataclass(frozen=True)
class SpaceAudit:
    """The audit in one space; distances are Euclidean, medians over the audited images."""

    closer_to_train_share: float
    near_copy_share: float
    near_copy_threshold: float
    median_train_distance: float
    median_test_distance: float


def raw_images(images: Images, index: np.ndarray | None = None) -> np.ndarray | torch.Tensor:
    """``images`` (those at ``index``) as stored: uint8 [n,H,W,3] or float [n,3,H,W]; a dataset reads no others."""
    if isinstance(images, ImageArrayDataset):
        return np.asarray(images.images if index is None else images.images[index])
    if isinstance(images, Dataset):
        positions = range(len(images)) if index is None else index.tolist()
        return torch.stack([images[int(i)][0] for i in positions])
    if index is None:
        return images
    return images[torch.from_numpy(index)] if isinstance(images, torch.Tensor) else images[index]


def float_chunks(images: np.ndarray | torch.Tensor, size: int = CHUNK) -> Iterator[torch.Tensor]:
    """Float32 [n,3,H,W] chunks in [0, 1] of uint8 [N,H,W,3] or float [N,3,H,W] images (numpy chunks are copied,
    so read-only arrays such as memory maps are fine)."""
    for start in range(0, len(images), size):
        chunk = torch.as_tensor(np.array(images[start:start + size]) if isinstance(images, np.ndarray)
                                else images[start:start + size])
        if chunk.dtype == torch.uint8:
            chunk = chunk.permute(0, 3, 1, 2).float().div_(255.0)
        yield chunk.float().contiguous()


def embed(images: np.ndarray | torch.Tensor, features: FeatureFn | None, size: int = CHUNK) -> Chunks:
    """``images`` as flat float32 vectors, chunk by chunk: pixels converted again at each pass (memory stays at one
    chunk), or ``features`` of each chunk (on CPU), computed once."""
    if features is None:
        return lambda: (chunk.flatten(1) for chunk in float_chunks(images, size))
    with torch.no_grad():
        embedded = [features(chunk).detach().float().cpu().flatten(1) for chunk in float_chunks(images, size)]
    return lambda: iter(embedded)


def nearest_distances(queries: Chunks, references: Chunks) -> torch.Tensor:
    """Each query's Euclidean distance to its nearest reference, one chunk pair at a time."""
    nearest = []
    for query in queries():
        best = torch.full((len(query),), float("inf"))
        for reference in references():
            best = torch.minimum(best, torch.cdist(query, reference).min(dim=1).values)
        nearest.append(best)
    return torch.cat(nearest)


def audit_space(synthetic: Chunks, train: Chunks, test: Chunks, all_train: Chunks) -> SpaceAudit:
    """The audit of embedded ``synthetic`` images against ``train`` and ``test`` references of equal size.

    Closer-to-train share: nearest-reference-train distance strictly below nearest-test distance (0.5 expected
    without memorisation). Near-copy threshold rule: a synthetic image is a near-copy when its nearest distance to
    ``all_train`` (every train image, so a copy of any of them is caught) is below the NEAR_COPY_PERCENTILE-th
    percentile of the real ``test`` images' nearest distances to ``all_train``.
    """
    to_train = nearest_distances(synthetic, train)
    to_test = nearest_distances(synthetic, test)
    real_to_all_train = nearest_distances(test, all_train)
    threshold = float(np.percentile(real_to_all_train.numpy(), NEAR_COPY_PERCENTILE))
    return SpaceAudit(
        closer_to_train_share=float((to_train < to_test).double().mean()),
        near_copy_share=float((nearest_distances(synthetic, all_train) < threshold).double().mean()),
        near_copy_threshold=threshold,
        median_train_distance=float(to_train.median()),
        median_test_distance=float(to_test.median()),
    )


def reference_indices(train_size: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted seeded subsamples of train and test indices, both of size min(train_size, test_size)."""
    size = min(train_size, test_size)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(train_size, size, replace=False))
    test = np.arange(test_size) if size == test_size else np.sort(rng.choice(test_size, size, replace=False))
    return train, test


def privacy_audit(synthetic: Images, train: Images, test: Images, seed: int, features: FeatureFn | None = None,
                  chunk: int = CHUNK) -> dict[str, SpaceAudit]:
    """The audit of ``synthetic`` against the client's ``train`` and ``test`` images in pixel space and, when
    ``features`` is given, in its feature space (keys ``pixel``, ``feature``)."""
    if len(synthetic) == 0 or len(train) == 0 or len(test) == 0:
        raise ValueError(f"the audit needs images: {len(synthetic)} synthetic, {len(train)} train, {len(test)} test")
    train_index, test_index = reference_indices(len(train), len(test), seed)
    sets = [raw_images(synthetic), raw_images(train, train_index), raw_images(test, test_index), raw_images(train)]
    shapes = {tuple(next(float_chunks(images, 1)).shape[1:]) for images in sets}
    if len(shapes) > 1:
        raise ValueError(f"synthetic, train and test images differ in shape: {sorted(shapes)}")
    spaces = {"pixel": None, **({"feature": features} if features is not None else {})}
    return {space: audit_space(*(embed(images, fn, chunk) for images in sets)) for space, fn in spaces.items()}


def audit_metrics(audits: dict[str, SpaceAudit]) -> dict[str, float]:
    """The audit as flat scalar fit metrics: ``audit_<space>_closer_share``, ``audit_<space>_near_copy_share`` and
    the distances (``audit_<space>_<field>``)."""
    renamed = {"closer_to_train_share": "closer_share"}
    return {f"audit_{space}_{renamed.get(name, name)}": value
            for space, audit in audits.items() for name, value in asdict(audit).items()}


def penultimate_features(model: nn.Module, device: torch.device) -> FeatureFn:
    """The input of ``model``'s last Linear layer (its classification head) as the feature of each image, with the
    model in eval mode on ``device``."""
    heads = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no Linear head to take penultimate features from")

    def features(images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = heads[-1].register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
        was_training = model.training
        model.to(device).eval()
        try:
            with torch.no_grad():
                model(images.to(device))
        finally:
            hook.remove()
            model.train(was_training)
        return captured[0]

    return features
