"""DomainNet with its official per-domain train/test split files.

Layout under ``data.path``: the unpacked domain folders ``<domain>/<class>/<image>`` and, beside them,
``<domain>_train.txt`` and ``<domain>_test.txt`` whose lines read ``<domain>/<class>/<file> <label>``.
The split files decide which images a domain has and which are its test images (``DomainArrays.is_test``);
the class order is their label order. ``data.classes`` picks a subset of class folders, relabelled
0..K-1 in that order. Decoding and caching go through ``imagefolder.load_files``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmfed_flwr.data import imagefolder
from warmfed_flwr.data.partition import DomainArrays, cache_key, select_domains
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

VERSION = "v1"
SPLITS = ("train", "test")
TRAIN_SUFFIX = "_train.txt"


@dataclass(frozen=True)
class Entry:
    """One line of a split file."""

    relative: str
    class_folder: str
    label: int
    is_test: bool
    source: Path
    line: int


def split_file(root: Path, domain: str, split: str) -> Path:
    """The official split file of ``domain`` (``split`` is train or test)."""
    return root / f"{domain}_{split}.txt"


def read_split(root: Path, domain: str, split: str) -> list[Entry]:
    """The entries of ``<root>/<domain>_<split>.txt``."""
    path = split_file(root, domain, split)
    if not path.is_file():
        raise DataError(
            f"DomainNet split file {path} is missing; put {domain}_train.txt and {domain}_test.txt "
            f"from the DomainNet download beside the {domain}/ folder"
        )
    entries = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.strip().rsplit(maxsplit=1)
        parts = Path(fields[0]).parts
        if len(fields) != 2 or not fields[1].isdigit() or len(parts) != 3 or parts[0] != domain:
            raise DataError(
                f"DomainNet split file {path} line {number} reads {text.strip()!r}, not "
                f"'{domain}/<class>/<file> <label>'; re-download the split file"
            )
        entries.append(Entry(fields[0], parts[1], int(fields[1]), split == "test", path, number))
    return entries


def official_classes(entries: list[Entry]) -> list[str]:
    """Class folder names in label order, checking that every class folder has one label and vice versa."""
    first_of_label: dict[int, Entry] = {}
    first_of_class: dict[str, Entry] = {}
    for entry in entries:
        seen = first_of_label.setdefault(entry.label, entry)
        if seen.class_folder != entry.class_folder:
            raise DataError(
                f"DomainNet split file {entry.source} line {entry.line} gives label {entry.label} to class "
                f"{entry.class_folder} but {seen.source} line {seen.line} gives it to {seen.class_folder}; "
                "re-download the split files"
            )
        seen = first_of_class.setdefault(entry.class_folder, entry)
        if seen.label != entry.label:
            raise DataError(
                f"DomainNet split file {entry.source} line {entry.line} gives class {entry.class_folder} label "
                f"{entry.label} but {seen.source} line {seen.line} gives it label {seen.label}; "
                "re-download the split files"
            )
    return [first_of_label[label].class_folder for label in sorted(first_of_label)]


def select_classes(official: list[str], requested: list[str], root: Path) -> list[str]:
    """The class folders to load in official order: ``requested`` (all when empty), each of which must exist."""
    if not requested:
        return official
    missing = [c for c in requested if c not in official]
    if missing:
        sample = ", ".join(official[:12]) + (", ..." if len(official) > 12 else "")
        raise DataError(
            f"data.classes names {', '.join(missing)}, not a class of the DomainNet split files under {root}; "
            f"use class folder names such as {sample}"
        )
    return [c for c in official if c in requested]


def _load_domain(
    root: Path, domain: str, entries: list[Entry], class_index: dict[str, int], image_size: int, cache_dir: Path,
    on_corrupt: str,
) -> DomainArrays:
    chosen = [e for e in entries if e.class_folder in class_index]
    if not chosen:
        raise DataError(f"DomainNet domain {domain} has no images of the selected classes; check data.classes")
    folder = root / domain
    files = [(root / e.relative, class_index[e.class_folder]) for e in chosen]
    is_test = np.array([e.is_test for e in chosen], dtype=bool)
    try:
        listing = imagefolder.listing_entries(folder, [path for path, _ in files])
    except FileNotFoundError as exc:
        entry = next(e for e, (path, _) in zip(chosen, files, strict=True) if str(path) == str(exc.filename))
        raise DataError(
            f"DomainNet split file {entry.source} line {entry.line} names {root / entry.relative}, which does not "
            "exist; unpack the full domain archive under data.path or re-download the split files"
        ) from exc
    labelled = [f"{item}:{label}:{int(test)}" for item, (_, label), test in zip(listing, files, is_test, strict=True)]
    key = cache_key("domainnet", VERSION, folder.resolve(), image_size, on_corrupt, *labelled)
    arrays, kept = imagefolder.load_files(
        folder, files, image_size, imagefolder.cache_file(cache_dir, "domainnet", domain, key), on_corrupt
    )
    return DomainArrays(arrays.images, arrays.labels, is_test[kept])


def load_domains(
    root: str | Path,
    domains: list[str],
    default_domains: list[str],
    classes: list[str],
    image_size: int,
    cache_dir: Path,
    on_corrupt: str = "error",
) -> tuple[dict[str, DomainArrays], list[str]]:
    """The selected DomainNet domains (official train/test split in ``is_test``) and the prompt class names."""
    root = imagefolder.data_root(root, "the DomainNet root")
    named = (p.name.removesuffix(TRAIN_SUFFIX) for p in root.glob("*" + TRAIN_SUFFIX))
    available = sorted(name for name in named if (root / name).is_dir())
    if not available:
        raise DataError(
            f"data.path {root} has no <domain>_train.txt beside a <domain>/ folder; put DomainNet's split files "
            "next to the unpacked domain folders"
        )
    selected = select_domains(available, domains, default_domains, f"DomainNet data.path {root}")
    entries = {d: [e for split in SPLITS for e in read_split(root, d, split)] for d in selected}
    class_folders = select_classes(official_classes([e for d in selected for e in entries[d]]), classes, root)
    class_index = {name: i for i, name in enumerate(class_folders)}
    arrays = {
        d: _load_domain(root, d, entries[d], class_index, image_size, cache_dir, on_corrupt) for d in selected
    }
    return arrays, [imagefolder.prompt_name(c) for c in class_folders]
