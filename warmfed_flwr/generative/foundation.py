"""The embedded "tiny" foundation generator: its build recipe, its cache and the ``warmfed-build-foundation`` CLI.

No hub download is needed: ``build_tiny_pipeline`` creates the pipeline from configs, ``pretrain_foundation``
trains it on a public image pool (MNIST digits by default) and ``foundation_quality`` scores it; the result is
saved in diffusers format under the cache directory and loaded through the same code path as any hub id.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from filelock import FileLock, Timeout

from warmfed_flwr.config import GeneratorConfig
from warmfed_flwr.data import default_cache_dir, load_public_pool
from warmfed_flwr.generative.foundation_training import pretrain_foundation
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE
from warmfed_flwr.generative.quality import foundation_quality, split_holdout
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline
from warmfed_flwr.training import resolve_device

logger = logging.getLogger(__name__)

ARCHITECTURE = "tiny-sd-v2"
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


def cache_problem(directory: Path) -> str | None:
    """Why the cached foundation at ``directory`` is incomplete (no record, no recorded hashes, a listed file missing,
    unreadable or not matching its sha256), or None when it is complete. Errors other than a missing or unreadable
    file (such as a PermissionError) propagate."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except FileNotFoundError:
        return f"{RECORD} is missing"
    except ValueError as exc:
        return f"{RECORD} is unreadable ({exc})"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or "model_index.json" not in files \
            or not any(name.endswith(".safetensors") for name in files):
        return f"{RECORD} records no sha256 of its weight files (built before they were recorded)"
    for name, expected in files.items():
        path = directory / name
        try:
            if sha256_file(path) != expected:
                return f"{path} does not match its sha256 in {RECORD}"
        except (FileNotFoundError, IsADirectoryError):
            return f"{path} is missing or not a file"
    return None


def _build_into(spec: FoundationSpec, cache_dir: Path, template: str, target: Path) -> None:
    """Build, pretrain, score and save the foundation atomically at ``target``."""
    started = time.perf_counter()
    pool, class_names = load_public_pool(spec.source, spec.image_size, cache_dir)
    train, holdout = split_holdout(pool, spec.holdout_fraction, spec.seed)
    device = resolve_device("auto")
    pipe = build_tiny_pipeline(spec.seed, spec.image_size)
    stats = pretrain_foundation(pipe, train, class_names, spec, template, device)
    quality = foundation_quality(
        pipe, train, class_names, template, holdout, spec.quality_images_per_class, spec.quality_steps,
        spec.quality_guidance, spec.seed, device,
    )
    pipe.to("cpu")
    build_seconds = time.perf_counter() - started
    record = {
        "key": target.name, "architecture": ARCHITECTURE, "spec": dataclasses.asdict(spec), "template": template,
        "class_names": class_names, "build_seconds": build_seconds, "training": stats, "quality": quality,
        "versions": library_versions(),
    }
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        record["files"] = file_hashes(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "foundation built in %.0f s at %s: class fidelity %.1f%%, train-on-synthetic/test-on-real %.1f%%",
        build_seconds, target, 100 * quality["class_fidelity_mean"], 100 * quality["train_synthetic_test_real_acc"],
    )


def ensure_foundation(spec: FoundationSpec, cache_dir: Path, template: str = DEFAULT_TEMPLATE) -> Path:
    """The diffusers directory of the tiny foundation for ``spec``, built once under a file lock and cached.

    A cached one counts only when every file matches the sha256 its build recorded (:func:`cache_problem`);
    otherwise it is rebuilt, with one warning line.
    """
    root = Path(cache_dir) / "foundation"
    target = root / foundation_key(spec, template)
    if cache_problem(target) is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another process is building the foundation %s; waiting for it", target)
        lock.acquire()
    try:
        problem = cache_problem(target)
        if problem is not None:
            if target.exists():
                logger.warning("the cached foundation %s is incomplete (%s); rebuilding it", target, problem)
            logger.info("building the tiny foundation %s (%d steps on '%s'); this runs once", target, spec.steps,
                        spec.source)
            _build_into(spec, Path(cache_dir), template, target)
    finally:
        lock.release()
    return target


def main(argv: list[str] | None = None) -> None:
    """Console script ``warmfed-build-foundation``: build the tiny foundation ahead of a run and print its quality.

    ``--export DIR`` then copies it (safetensors only) with a ``model_card.json`` into DIR, the way
    ``warmfed_flwr/generative/tiny_foundation`` ships inside the package.
    """
    from warmfed_flwr.generative.shipped import export_foundation

    defaults = FoundationSpec()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="UNet + text encoder training steps")
    parser.add_argument("--source", default=defaults.source, help="'digits' or an ImageFolder path")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: the project cache)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template with {label}")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="also export it with a model card into DIR (e.g. warmfed_flwr/generative/tiny_foundation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    spec = dataclasses.replace(defaults, steps=args.steps, source=args.source, image_size=args.image_size,
                               seed=args.seed)
    path = ensure_foundation(spec, args.cache_dir, args.template)
    record = json.loads((path / RECORD).read_text())
    quality = record["quality"]
    print(f"foundation: {path}")
    print(f"build seconds: {record['build_seconds']:.0f}")
    print(f"class fidelity (mean): {100 * quality['class_fidelity_mean']:.1f}%")
    for name, accuracy in quality["class_fidelity"].items():
        print(f"  {name}: {100 * accuracy:.1f}%")
    print(f"train-on-synthetic / test-on-real: {100 * quality['train_synthetic_test_real_acc']:.1f}%")
    print(f"train-on-real / test-on-real: {100 * quality['train_real_test_real_acc']:.1f}%")
    if args.export is not None:
        card = export_foundation(path, args.export)
        print(f"exported: {args.export} ({len(card['files'])} files + model_card.json)")


if __name__ == "__main__":
    main()
