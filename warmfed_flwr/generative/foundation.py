"""The embedded "tiny" foundation generator's cache: built once per recipe (:class:`FoundationSpec`) under a file
lock, hash-checked on every use.

No hub download is needed: ``build_tiny_pipeline`` creates the pipeline from configs, ``pretrain_foundation``
trains it on a public image pool (MNIST digits by default) and ``foundation_quality`` scores it; the result is
saved in diffusers format under the cache directory and loaded through the same code path as any hub id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

from warmfed_flwr.data import load_public_pool
from warmfed_flwr.generative.foundation_spec import (
    ARCHITECTURE,
    RECORD,
    FoundationSpec,
    file_hashes,
    foundation_key,
    library_versions,
    sha256_file,
)
from warmfed_flwr.generative.foundation_training import pretrain_foundation
from warmfed_flwr.generative.images import dataset_tensors
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE
from warmfed_flwr.generative.quality import foundation_quality, split_holdout
from warmfed_flwr.generative.styles import source_phrase
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline
from warmfed_flwr.generative.tokenizer import class_words
from warmfed_flwr.learning.training import resolve_device

logger = logging.getLogger(__name__)


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
    pipe = build_tiny_pipeline(spec.seed, spec.image_size, class_words(class_names))
    stats = pretrain_foundation(pipe, train, class_names, spec, template, device)
    scored = (spec.quality_images_per_class, spec.quality_steps, spec.quality_guidance, spec.seed, device)
    phrase = source_phrase(dataset_tensors(holdout)[0]) if spec.style_steps > 0 else ""
    quality = foundation_quality(pipe, train, class_names, template, holdout, *scored, domain_phrase=phrase)
    plain = {}
    if phrase:
        plain["plain_prompt_quality"] = foundation_quality(pipe, train, class_names, template, holdout, *scored)
    pipe.to("cpu")
    build_seconds = time.perf_counter() - started
    record = {
        "key": target.name, "architecture": ARCHITECTURE, "spec": dataclasses.asdict(spec), "template": template,
        "class_names": class_names, "build_seconds": build_seconds, "training": stats, "quality": quality,
        **plain, "versions": library_versions(),
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
