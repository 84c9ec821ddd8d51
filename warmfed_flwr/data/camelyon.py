"""Camelyon17-WILDS: 96x96 lymph-node patches read through the dataset's metadata.csv, one domain per hospital.

Layout under ``data.path`` (the unpacked WILDS ``camelyon17_v1.0`` folder): ``metadata.csv`` with columns
patient, node, x_coord, y_coord, tumor (the label) and center (the hospital, 0-4), and the patches at
``patches/patient_{patient:03d}_node_{node}/patch_patient_{patient:03d}_node_{node}_x_{x}_y_{y}.png``.
Domains are ``hospital0`` .. ``hospital4``.

Train/test: WILDS' official split is by hospital (train on hospitals 0, 3, 4; validate on 1; test on 2)
and gives no per-hospital test set, and the csv's ``split`` column is WILDS' random 10 % validation draw,
not a test split. Neither fits one client per hospital, so the loader sets no predefined split: each
hospital is split by ``data.test-fraction`` (stratified, seeded) like the ImageFolder sources.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from warmfed_flwr.data import imagefolder
from warmfed_flwr.data.partition import DomainArrays, cache_key, select_domains
from warmfed_flwr.errors import DataError

VERSION = "v1"
CLASS_NAMES = ["normal tissue", "tumor tissue"]
"""Prompt words for the csv's tumor = 0 / 1."""
COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "center")
NUM_HOSPITALS = 5


@dataclass(frozen=True)
class Patch:
    """One metadata.csv row."""

    path: Path
    tumor: int
    line: int


def hospital_name(center: int) -> str:
    """The domain name of hospital ``center``."""
    return f"hospital{center}"


def patch_path(root: Path, patient: int, node: int, x: int, y: int) -> Path:
    """Where WILDS stores the patch of a metadata row."""
    folder = f"patient_{patient:03d}_node_{node}"
    return root / "patches" / folder / f"patch_{folder}_x_{x}_y_{y}.png"


def _integer(csv_path: Path, line: int, column: str, text: str | None) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise DataError(
            f"{csv_path} line {line}: column {column} = {text!r} is not an integer; restore the WILDS metadata.csv"
        ) from None


def read_metadata(root: Path) -> dict[int, list[Patch]]:
    """The patches of each hospital (center) in metadata.csv order."""
    csv_path = root / "metadata.csv"
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path} is missing; point data.path at the unpacked WILDS camelyon17_v1.0 folder "
            "(metadata.csv and patches/)"
        )
    by_center: dict[int, list[Patch]] = {c: [] for c in range(NUM_HOSPITALS)}
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{csv_path} has no column(s) {', '.join(missing)}; it needs {', '.join(COLUMNS)} "
                "(use the metadata.csv of WILDS camelyon17_v1.0)"
            )
        for line, row in enumerate(reader, start=2):
            values = {c: _integer(csv_path, line, c, row[c]) for c in COLUMNS}
            if values["tumor"] not in (0, 1):
                raise DataError(f"{csv_path} line {line}: column tumor = {values['tumor']} must be 0 or 1; "
                                "restore the WILDS metadata.csv")
            if values["center"] not in by_center:
                raise DataError(f"{csv_path} line {line}: column center = {values['center']} must be a hospital "
                                f"0-{NUM_HOSPITALS - 1}; restore the WILDS metadata.csv")
            path = patch_path(root, values["patient"], values["node"], values["x_coord"], values["y_coord"])
            by_center[values["center"]].append(Patch(path, values["tumor"], line))
    return by_center


def _load_hospital(
    root: Path, name: str, patches: list[Patch], image_size: int, cache_dir: Path, on_corrupt: str
) -> DomainArrays:
    folder = root / "patches"
    files = [(p.path, p.tumor) for p in patches]
    try:
        listing = imagefolder.listing_entries(folder, [path for path, _ in files])
    except FileNotFoundError as exc:
        patch = next(p for p in patches if str(p.path) == str(exc.filename))
        raise DataError(
            f"{root / 'metadata.csv'} line {patch.line} names patch {patch.path}, which does not exist; "
            "unpack the full WILDS camelyon17_v1.0 archive under data.path"
        ) from exc
    labelled = [f"{item}:{label}" for item, (_, label) in zip(listing, files, strict=True)]
    key = cache_key("camelyon17", VERSION, folder.resolve(), image_size, on_corrupt, *labelled)
    arrays, _ = imagefolder.load_files(
        folder, files, image_size, imagefolder.cache_file(cache_dir, "camelyon17", name, key), on_corrupt
    )
    return arrays


def load_domains(
    root: str | Path,
    domains: list[str],
    default_domains: list[str],
    image_size: int,
    cache_dir: Path,
    on_corrupt: str = "error",
) -> tuple[dict[str, DomainArrays], list[str]]:
    """The selected hospitals of Camelyon17-WILDS and the prompt class names."""
    root = imagefolder.data_root(root, "the WILDS camelyon17_v1.0 folder")
    by_center = read_metadata(root)
    present = {hospital_name(c): patches for c, patches in by_center.items() if patches}
    if not present:
        raise DataError(f"{root / 'metadata.csv'} lists no patches; restore the WILDS metadata.csv")
    selected = select_domains(present, domains, default_domains, f"Camelyon17 data.path {root}")
    arrays = {
        name: _load_hospital(root, name, present[name], image_size, cache_dir, on_corrupt) for name in selected
    }
    return arrays, list(CLASS_NAMES)
