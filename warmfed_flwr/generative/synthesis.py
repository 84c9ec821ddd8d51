"""Labelled synthetic images from class embeddings: batched, seeded, cached on disk without pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch.nn import functional as F
from torchvision.utils import save_image

from warmfed_flwr.data.cache_files import ArrayCheck, load_npz, require_arrays, save_npz_atomic
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.prompts import prompt_embeddings
from warmfed_flwr.records.progress import progress_bar

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
_SEED_STRIDE = 1_000_003


def batch_seed(seed: int, batch_index: int) -> int:
    """The torch.Generator seed of one synthesis batch."""
    return (seed * _SEED_STRIDE + batch_index) % 2**63


def synthesize_batches(
    pipe: StableDiffusionPipeline,
    embeddings: torch.Tensor,
    images_per_class: int,
    steps: int,
    guidance: float,
    batch_size: int,
    seed: int,
    size: int | None = None,
    negative_prompt: str = "",
    timestep_spacing: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Generate ``images_per_class`` images for each row of ``embeddings`` [C, seq, dim], one batch at a time.

    Labels interleave the classes (0, 1, ..., C-1, 0, 1, ...) so every batch holds several classes.
    The negative embedding for classifier-free guidance is the pipeline's own embedding of ``negative_prompt``
    (by default "", the unconditional prompt). ``timestep_spacing`` (leading, trailing, linspace) replaces the
    sampler's spacing of its steps when given (trailing starts from pure noise, t = 999).
    Batch ``b`` draws its noise from ``torch.Generator().manual_seed(batch_seed(seed, b))`` on the CPU, so a
    run repeats for the same seed and batch size. Yields float images [b, 3, H, W] in [0, 1] on the CPU
    (resized to ``size`` when given) and their int64 labels [b]; the inputs are checked before the first batch.
    """
    null = prompt_embeddings(pipe, [negative_prompt])
    if embeddings.ndim != 3 or tuple(embeddings.shape[1:]) != tuple(null.shape[1:]):
        raise GeneratorError(
            f"class embeddings have shape {tuple(embeddings.shape)} but this generator expects [C, "
            f"{null.shape[1]}, {null.shape[2]}]; compute them with the same generator's text encoder"
        )
    if images_per_class <= 0 or batch_size <= 0 or steps <= 0:
        raise GeneratorError(
            f"synthesis needs positive images_per_class, batch_size and steps (got {images_per_class}, "
            f"{batch_size}, {steps}); fix the synthesis config"
        )
    labels = torch.arange(embeddings.shape[0]).repeat(images_per_class)
    pipe.set_progress_bar_config(disable=True)
    if timestep_spacing is not None and pipe.scheduler.config.timestep_spacing != timestep_spacing:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=timestep_spacing)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device, dtype = pipe.device, pipe.unet.dtype
        with progress_bar(total=len(labels), desc="synthesis", unit="img") as bar:
            for index, start in enumerate(range(0, len(labels), batch_size)):
                batch = labels[start:start + batch_size]
                generator = torch.Generator().manual_seed(batch_seed(seed, index))
                out = pipe(
                    prompt_embeds=embeddings[batch].to(device, dtype),
                    negative_prompt_embeds=null.expand(len(batch), -1, -1).to(device, dtype),
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generator,
                    output_type="pt",
                ).images
                out = out.float().clamp(0.0, 1.0).cpu()
                if size is not None and tuple(out.shape[-2:]) != (size, size):
                    out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True).clamp(0.0, 1.0)
                bar.update(len(batch))
                yield out, batch

    return batches()


def synthesize(
    pipe: StableDiffusionPipeline,
    embeddings: torch.Tensor,
    images_per_class: int,
    steps: int,
    guidance: float,
    batch_size: int,
    seed: int,
    size: int | None = None,
    negative_prompt: str = "",
    timestep_spacing: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All of :func:`synthesize_batches` at once: float images [N, 3, H, W] in [0, 1] and int64 labels [N]."""
    parts = list(synthesize_batches(pipe, embeddings, images_per_class, steps, guidance, batch_size, seed, size,
                                    negative_prompt, timestep_spacing))
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])


def quantize(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] as uint8 (rounded), the form synthetic images are cached and sent in."""
    return (images.detach().cpu().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


@dataclass(frozen=True)
class ChunkedTensor:
    """A tensor of ``shape`` and ``dtype`` given as consecutive chunks along its first axis (``chunks()`` yields
    them), hashed exactly as the whole tensor would be but never held at once."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: Callable[[], Iterable[torch.Tensor]]


def feed_digest(digest: Any, part: Any) -> None:
    """Hash one value with a type tag, recursing into containers and dataclasses."""
    if isinstance(part, torch.Tensor):
        feed_digest(digest, ChunkedTensor(tuple(part.shape), part.dtype, lambda: [part]))
    elif isinstance(part, ChunkedTensor):
        digest.update(f"tensor{tuple(part.shape)}{part.dtype}".encode())
        for chunk in part.chunks():
            digest.update(chunk.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        digest.update(f"ndarray{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    elif isinstance(part, dict):
        digest.update(f"dict{len(part)}".encode())
        for key in sorted(part, key=str):
            feed_digest(digest, str(key))
            feed_digest(digest, part[key])
    elif isinstance(part, (list, tuple)):
        digest.update(f"seq{len(part)}".encode())
        for item in part:
            feed_digest(digest, item)
    elif dataclasses.is_dataclass(part) and not isinstance(part, type):
        digest.update(type(part).__name__.encode())
        feed_digest(digest, dataclasses.asdict(part))
    else:
        digest.update(f"{type(part).__name__}:{part!r};".encode())


def synthesis_key(*parts: Any) -> str:
    """sha256 over tensors' bytes (with shape and dtype), config values and dataclasses."""
    digest = hashlib.sha256()
    for part in parts:
        feed_digest(digest, part)
    return digest.hexdigest()


def pipeline_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """sha256 of everything in a pipeline that shapes what it draws: the UNet's, VAE's and text encoder's weights
    (with dtypes), the scheduler config and the tokenizer's vocabulary. Cache keys use it, never the base's name."""
    return synthesis_key(
        "generator", pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict(),
        dict(pipe.scheduler.config), sorted(pipe.tokenizer.get_vocab().items()),
    )


def cached_arrays(
    cache_dir: Path, key: str, make: Callable[[], dict[str, np.ndarray]], check: ArrayCheck | None = None
) -> dict[str, np.ndarray]:
    """Named arrays stored at ``cache_dir/<key>.npz`` (no pickle), made by ``make()`` when absent, unreadable or
    failing ``check`` (the unreadable file is removed with one warning), and written atomically."""
    if not _KEY.match(key):
        raise GeneratorError(f"cache key {key!r} is not a file-safe name; build it with synthesis_key()")
    path = Path(cache_dir) / f"{key}.npz"
    arrays = load_npz(path, check)
    if arrays is not None:
        logger.info("loaded from cache %s", path)
        return arrays
    arrays = make()
    save_npz_atomic(path, compressed=False, **arrays)
    logger.info("cached at %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return arrays


def _check_synthetic_set(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless ``arrays`` hold uint8 images [N, 3, H, W] and N labels (raise KeyError if absent)."""
    require_arrays({"images": 4, "labels": 1}, paired=("images", "labels"))(arrays)
    images = arrays["images"]
    if images.dtype != np.uint8 or images.shape[1] != 3:
        raise ValueError(f"images are {images.dtype} {images.shape}, not uint8 [N, 3, H, W]")


def cached_synthesis(
    cache_dir: Path, key: str, make: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] and int64 labels [N] stored at ``cache_dir/<key>.npz``, made when absent or
    unreadable.

    ``make()`` yields batches of float images [b, 3, H, W] in [0, 1] and labels; each batch is quantized as it
    comes, so no float copy of the whole set is ever held. The file keeps the images as [N, 3, H, W].
    """

    def make_arrays() -> dict[str, np.ndarray]:
        images, labels = [], []
        for batch_images, batch_labels in make():
            images.append(quantize(batch_images))
            labels.append(batch_labels.detach().cpu().to(torch.int64).numpy())
        return {"images": np.concatenate(images), "labels": np.concatenate(labels)}

    arrays = cached_arrays(cache_dir, key, make_arrays, _check_synthetic_set)
    return np.ascontiguousarray(arrays["images"].transpose(0, 2, 3, 1)), arrays["labels"].astype(np.int64)


GRID_MAX_CLASSES = 20
"""Rows a synthetic grid shows at most (the first classes in label order): DomainNet's 345 would make a huge PNG."""


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8) -> None:
    """A PNG of uint8 [N, H, W, 3] images: one row per class (sorted label order, at most ``GRID_MAX_CLASSES``) of
    up to ``per_class`` images; short rows are padded black."""
    labels = np.asarray(labels)
    rows = []
    for label in sorted(set(labels.tolist()))[:GRID_MAX_CLASSES]:
        chosen = torch.from_numpy(np.ascontiguousarray(images[labels == label][:per_class]))
        chosen = chosen.permute(0, 3, 1, 2).float().div(255.0)
        if len(chosen) < per_class:
            chosen = torch.cat([chosen, torch.zeros((per_class - len(chosen), *chosen.shape[1:]))])
        rows.append(chosen)
    if not rows:
        raise GeneratorError(f"no images to draw in {path}; synthesize at least one image per class first")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), str(path), nrow=per_class, padding=1)
