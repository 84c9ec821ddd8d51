"""Hugging Face hub datasets (online users): download with ``datasets`` and convert to per-domain arrays.

The download (``fetch_dataset``, with an optional config name) and the conversion (``dataset_to_domains``)
are separate so the conversion can be used and tested on any in-memory ``datasets.Dataset``. Images are
decoded in batches straight into one preallocated uint8 array. All splits of a hub dataset are pooled;
the project does its own train/test partitioning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from warmfed_flwr.data.cache_files import require_arrays
from warmfed_flwr.data.partition import DomainArrays, cache_key, cached_arrays, select_domains
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

VERSION = "v1"
SINGLE_DOMAIN = "hub"
DECODE_BATCH = 256
"""Rows decoded per batch: at most this many full-size images are held in memory at once."""
DECODED = require_arrays({"images": 4, "labels": 1, "domain": 1, "domain_names": 1, "class_names": 1},
                         paired=("images", "labels", "domain"))
"""What a decode cache entry must hold; one that does not is rebuilt."""


def fetch_dataset(hub_id: str, config: str = "") -> Any:
    """All splits of hub dataset ``hub_id`` (its config ``config``; "" = the default) pooled into one ``Dataset``."""
    import datasets

    if not hub_id:
        raise DataError("data.hub-id is empty; set it to a hub dataset id or use data.source=imagefolder")
    named = f"{hub_id} (config {config})" if config else hub_id
    try:
        loaded = datasets.load_dataset(hub_id, config or None)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = datasets.concatenate_datasets([loaded[split] for split in loaded])
    except Exception as exc:  # noqa: BLE001 - network, auth, format and schema errors all end the same way
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise DataError(
            f"cannot load hub dataset {named}: {reason}; check the id or use data.source=imagefolder"
        ) from exc
    return loaded


def _names(dataset: Any, column: str, hub_id: str) -> tuple[list[str], np.ndarray]:
    """Sorted value names of a ClassLabel or string ``column`` and every row's index into them."""
    from datasets import ClassLabel

    feature = dataset.features[column]
    values = dataset[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), np.asarray(values, dtype=np.int64)
    if getattr(feature, "dtype", None) in ("string", "large_string"):
        names = sorted(set(values))
        lookup = {name: i for i, name in enumerate(names)}
        return names, np.array([lookup[v] for v in values], dtype=np.int64)
    raise DataError(
        f"hub dataset {hub_id} column '{column}' is {feature}, not a ClassLabel or string column; "
        "cast it with Dataset.cast_column or point the column setting at another column"
    )


def _to_rgb(value: Any, image_size: int) -> np.ndarray:
    from PIL import Image

    image = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value).astype(np.uint8))
    return np.asarray(image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _decode_rows(dataset: Any, rows: np.ndarray, image_column: str, image_size: int, out: np.ndarray) -> None:
    """Decode ``image_column`` of ``rows`` into ``out`` (uint8 [len(rows),S,S,3]), DECODE_BATCH rows at a time."""
    subset = dataset.select(rows.tolist()).select_columns([image_column])
    for start, batch in zip(range(0, len(rows), DECODE_BATCH), subset.iter(batch_size=DECODE_BATCH), strict=True):
        for offset, value in enumerate(batch[image_column]):
            out[start + offset] = _to_rgb(value, image_size)


def _decode_selected(
    dataset: Any,
    image_column: str,
    label_column: str,
    domain_column: str,
    image_size: int,
    domains: list[str] | None,
    default_domains: list[str] | None,
    hub_id: str,
) -> dict[str, np.ndarray]:
    """The selected domains' images in one preallocated uint8 array (domain-contiguous) with labels and names."""
    wanted = [c for c in (image_column, label_column, domain_column) if c]
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"hub dataset {hub_id} has no column(s) {', '.join(missing)}; its columns are "
            f"{', '.join(dataset.column_names)} (set data.hub-image-column / hub-label-column / hub-domain-column)"
        )
    if len(dataset) == 0:
        raise DataError(f"hub dataset {hub_id} is empty; check the id")
    class_names, labels = _names(dataset, label_column, hub_id)
    if domain_column:
        domain_names, domain_of = _names(dataset, domain_column, hub_id)
    else:
        domain_names, domain_of = [SINGLE_DOMAIN], np.zeros(len(dataset), dtype=np.int64)
    present = [name for i, name in enumerate(domain_names) if np.any(domain_of == i)]
    selected = select_domains(present, domains or present, default_domains or [], f"hub dataset {hub_id}")
    rows = [np.flatnonzero(domain_of == domain_names.index(name)) for name in selected]
    images = np.empty((sum(len(r) for r in rows), image_size, image_size, 3), dtype=np.uint8)
    start = 0
    for domain_rows in rows:
        _decode_rows(dataset, domain_rows, image_column, image_size, images[start : start + len(domain_rows)])
        start += len(domain_rows)
    return {
        "images": images,
        "labels": np.concatenate([labels[r] for r in rows]),
        "domain": np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(rows)]),
        "domain_names": np.array(selected, dtype=str),
        "class_names": np.array(class_names, dtype=str),
    }


def _split_domains(arrays: dict[str, np.ndarray]) -> dict[str, DomainArrays]:
    """Per-domain views of a domain-contiguous ``_decode_selected`` result (no copies)."""
    bounds = np.searchsorted(arrays["domain"], np.arange(len(arrays["domain_names"]) + 1))
    parts = [slice(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    return {
        str(name): DomainArrays(arrays["images"][part], arrays["labels"][part])
        for name, part in zip(arrays["domain_names"], parts, strict=True)
    }


def dataset_to_domains(
    dataset: Any,
    image_column: str,
    label_column: str,
    domain_column: str,
    image_size: int,
    domains: list[str] | None = None,
    default_domains: list[str] | None = None,
    hub_id: str = "dataset",
) -> tuple[dict[str, DomainArrays], list[str]]:
    """Per-domain uint8 arrays and class names from a ``datasets.Dataset`` (no domain column: one domain 'hub')."""
    arrays = _decode_selected(
        dataset, image_column, label_column, domain_column, image_size, domains, default_domains, hub_id
    )
    return _split_domains(arrays), [str(n) for n in arrays["class_names"]]


def load_domains(
    hub_id: str,
    image_column: str,
    label_column: str,
    domain_column: str,
    image_size: int,
    domains: list[str],
    default_domains: list[str],
    cache_dir: Path,
    hub_config: str = "",
) -> tuple[dict[str, DomainArrays], list[str]]:
    """The selected domains of hub dataset ``hub_id`` / ``hub_config`` (decoded arrays cached by its fingerprint)."""
    dataset = fetch_dataset(hub_id, hub_config)
    named = f"{hub_id} (config {hub_config})" if hub_config else hub_id
    fingerprint = getattr(dataset, "_fingerprint", "")
    key = cache_key(
        VERSION, hub_id, hub_config, fingerprint, image_column, label_column, domain_column, image_size, *domains
    )
    path = cache_dir / "data" / f"hub-{key}.npz"

    def build() -> dict[str, np.ndarray]:
        return _decode_selected(
            dataset, image_column, label_column, domain_column, image_size, domains, default_domains, named
        )

    cached = cached_arrays(path, build, DECODED) if fingerprint else build()
    return _split_domains(cached), [str(n) for n in cached["class_names"]]
