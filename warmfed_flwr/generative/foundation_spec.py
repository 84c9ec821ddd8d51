"""The tiny foundation's build recipe (:class:`FoundationSpec`) and the record of a build: the cache key of a recipe,
the library versions and the sha256 of every file it wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers

from warmfed_flwr.config.schema import GeneratorConfig
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE

ARCHITECTURE = "tiny-sd-v3"
"""Bumped whenever the tiny architecture or its training recipe changes, so stale caches are not reused."""
RECORD = "quality.json"
"""The build record in a cached foundation: recipe, quality figures and the sha256 of every other file."""


@dataclass(frozen=True)
class FoundationSpec:
    """Every knob of the tiny foundation build; its hash names the cache directory."""

    steps: int = GeneratorConfig().foundation_steps
    source: str = "digits"
    image_size: int = 32
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    vae_steps: int = 1200
    vae_photo_crops: int = 1600
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    uncond_prob: float = 0.1
    warmup_steps: int = 50
    holdout_fraction: float = 0.2
    quality_images_per_class: int = 50
    quality_steps: int = 10
    quality_guidance: float = 3.0
    style_steps: int = GeneratorConfig().foundation_style_steps
    style_lr: float = 3e-4
    style_copies: int = 6
    style_photo_crops: int = 2000
    style_plain_prob: float = 0.2


def foundation_key(spec: FoundationSpec, template: str = DEFAULT_TEMPLATE) -> str:
    """A short sha256 of the architecture version, the spec and the prompt template the text encoder learns."""
    payload = json.dumps({"arch": ARCHITECTURE, "spec": dataclasses.asdict(spec), "template": template}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """The Python, torch, diffusers and transformers versions of this process."""
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """The sha256 of every file a built foundation holds (weights and configs), by path relative to ``directory``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != RECORD)
    return {path.relative_to(directory).as_posix(): sha256_file(path) for path in files}
