"""Local ImageFolder datasets: multi-domain ``root/domain/class/image`` trees and single-domain ``root/class/image``.

This is the layout of PACS and Office-Caltech10 once unpacked (and of DomainNet's images, whose official
split files ``data.source=domainnet`` reads). Images are converted to RGB, resized to a square and cached
per domain as a compressed uint8 npz keyed by the folder listing (paths, sizes, modification times), so an
edited tree is decoded again. ``load_files`` (decode a labelled file list, cached) is shared with the
DomainNet and Camelyon17 loaders.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from warmfed_flwr.data.cache_files import require_arrays
from warmfed_flwr.data.partition import DomainArrays, cache_key, cached_arrays, select_domains
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

VERSION = "v1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DECODED = require_arrays({"images": 4, "labels": 1, "skipped": 1}, paired=("images", "labels"))
"""What a decode cache entry must hold; one that does not is rebuilt."""


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def prompt_name(folder_name: str) -> str:
    """The class name used in text prompts: the folder name with underscores as spaces."""
    return folder_name.replace("_", " ").strip()


def scan_classes(folder: Path) -> dict[str, list[Path]]:
    """Class folder name -> sorted image files of a ``folder/class/image`` tree."""
    classes = _subdirs(folder)
    if not classes:
        raise DataError(
            f"folder {folder} has no class folders; lay it out as {folder}/<class>/<image> "
            f"(a multi-domain data.path needs <root>/<domain>/<class>/<image>)"
        )
    tree = {}
    for class_dir in classes:
        files = _image_files(class_dir)
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it"
            )
        tree[class_dir.name] = files
    return tree


def _decode(path: Path, image_size: int) -> np.ndarray | str:
    """The image as uint8 [S,S,3], or the reason it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - a corrupt file can raise almost anything inside PIL
        return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def decode_files(
    folder: Path, files: list[tuple[Path, int]], image_size: int, on_corrupt: str
) -> dict[str, np.ndarray]:
    """Decode labelled image files (of ``folder``, named in errors) into a preallocated uint8 array."""
    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    bad: list[tuple[Path, str]] = []
    kept = np.ones(len(files), dtype=bool)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(lambda item: _decode(item[0], image_size), files)):
            if isinstance(result, str):
                bad.append((files[i][0], result))
                kept[i] = False
            else:
                images[i] = result
    if bad and on_corrupt != "skip":
        path, reason = bad[0]
        others = f" ({len(bad) - 1} more unreadable file(s) under {folder})" if len(bad) > 1 else ""
        raise DataError(
            f"image file {path} cannot be read ({reason}){others}; replace or delete it, or set data.on-corrupt=skip"
        )
    if not kept.any():
        raise DataError(f"folder {folder} holds no readable images; replace the corrupt files")
    return {
        "images": images if not bad else images[kept],
        "labels": np.array([label for _, label in files], dtype=np.int64)[kept],
        "skipped": np.array([str(path) for path, _ in bad], dtype=str),
    }


def listing_entries(folder: Path, paths: list[Path]) -> list[str]:
    """'relative path:size:mtime' of every file, for cache keys (FileNotFoundError names a missing one)."""
    entries = []
    for path in paths:
        stat = path.stat()
        entries.append(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    return entries


def _listing_key(folder: Path, tree: dict[str, list[Path]], image_size: int, on_corrupt: str) -> str:
    paths = [path for name in sorted(tree) for path in tree[name]]
    return cache_key(VERSION, folder.resolve(), image_size, on_corrupt, *listing_entries(folder, paths))


def load_files(
    folder: Path, files: list[tuple[Path, int]], image_size: int, cache_file: Path, on_corrupt: str
) -> tuple[DomainArrays, np.ndarray]:
    """The decoded (path, label) ``files`` of ``folder`` (cached at ``cache_file``) and the mask of files kept."""
    arrays = cached_arrays(cache_file, lambda: decode_files(folder, files, image_size, on_corrupt), DECODED)
    skipped = arrays["skipped"]
    kept = np.ones(len(files), dtype=bool)
    if len(skipped):
        log.warning("skipped %d unreadable image(s) under %s (data.on-corrupt=skip; first: %s)", len(skipped), folder,
                    skipped[0])
        unreadable = set(skipped.tolist())
        kept = np.array([str(path) not in unreadable for path, _ in files], dtype=bool)
    return DomainArrays(arrays["images"], arrays["labels"].astype(np.int64)), kept


def cache_file(cache_dir: Path, prefix: str, name: str, key: str) -> Path:
    """The npz cache path of decoded images: ``<cache_dir>/data/<prefix>-<name>-<key>.npz``."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40]
    return cache_dir / "data" / f"{prefix}-{label}-{key}.npz"


def _load_tree(
    folder: Path, tree: dict[str, list[Path]], class_names: list[str], image_size: int, cache_dir: Path,
    on_corrupt: str,
) -> DomainArrays:
    """The images of a scanned ``folder/class/image`` tree labelled by their index in ``class_names`` (cached)."""
    key = _listing_key(folder, tree, image_size, on_corrupt)
    files = [(path, class_names.index(name)) for name in class_names for path in tree[name]]
    path = cache_file(cache_dir, "imagefolder", folder.name, key)
    arrays, _ = load_files(folder, files, image_size, path, on_corrupt)
    return arrays


def data_root(root: str | Path, expected: str) -> Path:
    """``root`` as an absolute folder; a missing one stops with one line that says what it should be."""
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise DataError(f"data.path {path} does not exist or is not a folder; point it at {expected}")
    return path


def load_domains(
    root: str | Path,
    domains: list[str],
    default_domains: list[str],
    image_size: int,
    cache_dir: Path,
    on_corrupt: str = "error",
) -> tuple[dict[str, DomainArrays], list[str]]:
    """The selected domains of a ``root/domain/class/image`` tree and the prompt class names."""
    root = data_root(root, "a <root>/<domain>/<class>/<image> tree")
    available = [p.name for p in _subdirs(root)]
    if not available:
        raise DataError(f"data.path {root} has no domain folders; lay it out as {root}/<domain>/<class>/<image>")
    selected = select_domains(available, domains, default_domains, f"data.path {root}")
    trees = {name: scan_classes(root / name) for name in selected}
    reference = selected[0]
    folder_names = sorted(trees[reference])
    for name in selected[1:]:
        missing = sorted(set(folder_names) - set(trees[name]))
        extra = sorted(set(trees[name]) - set(folder_names))
        if missing or extra:
            raise DataError(
                f"domain folder {root / name} disagrees with {root / reference} on classes "
                f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}); "
                "give every domain the same class folders"
            )
    arrays = {
        name: _load_tree(root / name, trees[name], folder_names, image_size, cache_dir, on_corrupt) for name in selected
    }
    return arrays, [prompt_name(n) for n in folder_names]


def load_single_domain(
    root: str | Path, image_size: int, cache_dir: Path, on_corrupt: str = "error"
) -> tuple[DomainArrays, list[str]]:
    """A single-domain ``root/class/image`` tree and its prompt class names."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder; point it at a <root>/<class>/<image> tree"
        )
    tree = scan_classes(root)
    folder_names = sorted(tree)
    arrays = _load_tree(root, tree, folder_names, image_size, cache_dir, on_corrupt)
    return arrays, [prompt_name(n) for n in folder_names]
