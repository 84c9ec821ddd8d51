"""One client's partition, built once per (data config, seed) into ``<cache>/clients`` as uint8 .npy files and
memory-mapped from there by every later call, in any process: a client holds only its own partition."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import digits, imagefolder, loading
from warmfed_flwr.data.cache_files import read_or_miss
from warmfed_flwr.data.datasets import Benchmark, ClientSplit, ImageArrayDataset, ImageFileDataset
from warmfed_flwr.data.partition import DomainArrays, SplitArrays, build_lock, cache_key, select_domains
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

PARTITION_VERSION = "v1"
"""Part of every partition cache key: bump it when the same data and config would now split differently."""

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_client(cfg: DataConfig, seed: int, cache_dir: Path, partition_id: int) -> tuple[list[str], ClientSplit]:
    """The class names and Flower partition ``partition_id``: the same split as ``load_benchmark(...).clients[i]``.

    The first call decodes only what the partition needs (its own domain for a domain partition of digits or an
    ImageFolder tree, whatever data.clients-per-domain; every domain otherwise, and then it writes every partition)
    and caches it as uint8 .npy files under ``<cache>/clients``; later calls, in any process, memory-map those
    files.
    """
    cache_dir = Path(cache_dir).expanduser().absolute()
    folder = _partitions_dir(cfg, seed, cache_dir)
    class_names, _, split = _cached_partition(folder, cfg, seed, cache_dir, partition_id)
    return class_names, split


def load_clients(cfg: DataConfig, seed: int, cache_dir: Path) -> Benchmark:
    """Every partition through the same cache, memory-mapped: an image is read from disk only when it is used."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    folder = _partitions_dir(cfg, seed, cache_dir)  # fingerprints the source once for every partition
    class_names, count, first = _cached_partition(folder, cfg, seed, cache_dir, 0)
    rest = [_cached_partition(folder, cfg, seed, cache_dir, p)[2] for p in range(1, count)]
    return Benchmark(class_names, [first, *rest])


def _cached_partition(folder: Path, cfg: DataConfig, seed: int, cache_dir: Path,
                      partition_id: int) -> tuple[list[str], int, ClientSplit]:
    """(class names, number of partitions, the split) from the cache ``folder`` of ``cfg`` and ``seed``
    (:func:`_partitions_dir`), built first under a lock when missing."""
    path = folder / f"p{partition_id}"
    cached = _read_partition(path)
    if cached is not None:
        return cached
    with build_lock(folder):
        cached = _read_partition(path)
        if cached is None:
            class_names, count, built = _build_partitions(cfg, seed, cache_dir, partition_id)
            for p, (split, files) in built.items():
                if p == partition_id or not (folder / f"p{p}").is_dir():
                    _write_partition(folder / f"p{p}", class_names, count, split, files)
            cached = _read_partition(path)
    if cached is None:
        raise DataError(f"client partition cache {path} cannot be read back after writing it; check the disk")
    split = cached[2]
    log.info("client %d (%s): %d train / %d test images from %s", partition_id, split.name, len(split.train),
             len(split.test), path)
    return cached


def _partitions_dir(cfg: DataConfig, seed: int, cache_dir: Path) -> Path:
    """The cache folder of every partition of ``cfg`` and ``seed``, keyed by the data config and the source."""
    settings = [f"{key}={value}" for key, value in sorted(_partition_settings(cfg).items())]
    key = cache_key(PARTITION_VERSION, seed, _source_fingerprint(cfg), *settings)
    return cache_dir / "clients" / f"{cfg.source}-{key}"


def _partition_settings(cfg: DataConfig) -> dict[str, object]:
    """The data config as the cache key reads it: the whole config, less ``clients_per_domain`` and ``domain_split``
    at one client per domain, so those partitions keep the keys they had before these settings existed."""
    settings = cfg.model_dump()
    if cfg.clients_per_domain == 1:
        del settings["clients_per_domain"], settings["domain_split"]
    return settings


def _source_fingerprint(cfg: DataConfig) -> str:
    """The source data's identity without decoding it: the digits version, or the path, size and modification time
    of every file under ``data.path``. A hub dataset is identified by its config alone."""
    if cfg.source == "digits":
        return f"digits-{digits.VERSION}"
    if not cfg.path:
        return ""
    root = Path(cfg.path).expanduser().absolute()
    entries = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            entries.append(f"{os.path.relpath(path, root)}:{stat.st_size}:{stat.st_mtime_ns}")
    return cache_key(root, *entries)


def _domain_names(cfg: DataConfig) -> list[str] | None:
    """The domains the loader returns, in order, when known without decoding images (digits, imagefolder); else None."""
    requested = cfg.domain_list()
    if cfg.source == "digits":
        return requested if requested and all(d in digits.DOMAINS for d in requested) else None
    if cfg.source == "imagefolder" and cfg.path:
        root = Path(cfg.path).expanduser().absolute()
        folders = sorted(root.iterdir()) if root.is_dir() else []
        available = [p.name for p in folders if p.is_dir() and not p.name.startswith(".")]
        if available:
            return select_domains(available, requested, loading.DEFAULT_DOMAINS, f"data.path {root}")
    return None


def _build_partitions(
    cfg: DataConfig, seed: int, cache_dir: Path, partition_id: int
) -> tuple[list[str], int, dict[int, tuple[SplitArrays, list[str] | None]]]:
    """Decode and split what ``partition_id`` needs: (class names, number of partitions, {partition: (split, train
    files)}), just that partition (decoding only its own domain) for a domain partition with known domains, every
    partition otherwise.

    The partition functions run on stand-ins whose 'images' are indices into the decoded domains, with empty
    stand-ins for domains not decoded, so every seed and order is that of ``load_benchmark``.
    """
    names = _domain_names(cfg)
    if cfg.partition == "domain" and names is not None:
        per_domain = cfg.clients_per_domain
        if not 0 <= partition_id < len(names) * per_domain:
            raise DataError(f"partition-id {partition_id} is out of range: the domain partition of {', '.join(names)} "
                            f"has {len(names) * per_domain} clients ({per_domain} per domain); start one SuperNode "
                            "per client")
        own_domain = names[partition_id // per_domain]
        loaded, class_names = loading.load_domains(cfg.model_copy(update={"domains": own_domain}), cache_dir)
        wanted = [partition_id]
    else:
        loaded, class_names = loading.load_domains(cfg, cache_dir)
        names, wanted = list(loaded), None
    starts, standins, offset = {}, {}, 0
    for name in names:
        arrays = loaded.get(name)
        count = 0 if arrays is None else len(arrays)
        starts[name], index = offset, np.arange(offset, offset + count, dtype=np.int64)
        standins[name] = (DomainArrays(index, np.zeros(0, dtype=np.int64)) if arrays is None
                          else dataclasses.replace(arrays, images=index))
        offset += count
    splits = loading.partition_domains(standins, cfg, seed)
    if not 0 <= partition_id < len(splits):
        raise DataError(f"partition-id {partition_id} is out of range: data.partition={cfg.partition} gives "
                        f"{len(splits)} clients; start as many SuperNodes as data.num-clients")
    files = {name: _domain_files(cfg, name, arrays) for name, arrays in loaded.items()}
    built = {}
    for p in wanted or range(len(splits)):
        stand = splits[p]
        train_images, train_files = _gather(loaded, starts, files, stand.train.images)
        test_images, _ = _gather(loaded, starts, files, stand.test.images)
        split = SplitArrays(stand.name, stand.domain, DomainArrays(train_images, stand.train.labels),
                            DomainArrays(test_images, stand.test.labels))
        built[p] = (split, train_files)
    return class_names, len(splits), built


def _gather(
    loaded: dict[str, DomainArrays], starts: dict[str, int], files: dict[str, list[str] | None], index: np.ndarray
) -> tuple[np.ndarray, list[str] | None]:
    """The images (and files, when every domain has them) at stand-in ``index``, in that order."""
    shape = next(iter(loaded.values())).images.shape[1:]
    images = np.empty((len(index), *shape), dtype=np.uint8)
    paths: list[str] | None = [""] * len(index) if all(f is not None for f in files.values()) else None
    covered = 0
    for name, arrays in loaded.items():
        local = index - starts[name]
        where = np.flatnonzero((local >= 0) & (local < len(arrays)))
        images[where] = arrays.images[local[where]]
        if paths is not None:
            for position, i in zip(where.tolist(), local[where].tolist(), strict=True):
                paths[position] = files[name][i]  # type: ignore[index]
        covered += len(where)
    if covered != len(index):
        raise RuntimeError(f"a partition refers to {len(index) - covered} images of domains that were not decoded")
    return images, paths


def _domain_files(cfg: DataConfig, name: str, arrays: DomainArrays) -> list[str] | None:
    """The image file of every decoded image of ImageFolder domain ``name``, in order; None for other sources, or
    (with a warning) when files were skipped as unreadable so they no longer pair up."""
    if cfg.source != "imagefolder":
        return None
    folder = Path(cfg.path).expanduser().absolute() / name
    tree = imagefolder.scan_classes(folder)
    files = [(str(path), label) for label, cls in enumerate(sorted(tree)) for path in tree[cls]]
    if len(files) != len(arrays) or not np.array_equal([label for _, label in files], arrays.labels):
        log.warning("the decoded images of %s do not pair up with its image files (unreadable files skipped); "
                    "the generator's LoRA trains on the resized images", folder)
        return None
    return [path for path, _ in files]


def _write_partition(
    folder: Path, class_names: list[str], count: int, split: SplitArrays, train_files: list[str] | None
) -> None:
    """Write one partition (uint8 .npy arrays and meta.json) into a temporary folder and rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        arrays = {"train_images": split.train.images, "train_labels": split.train.labels,
                  "test_images": split.test.images, "test_labels": split.test.labels}
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array))
        meta = {"version": PARTITION_VERSION, "name": split.name, "domain": split.domain, "class_names": class_names,
                "clients": count, "native_train_files": train_files}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_partition(folder: Path) -> tuple[list[str], int, ClientSplit] | None:
    """A cached partition, memory-mapped; None when it is missing or unreadable (it is then removed and rebuilt)."""
    return read_or_miss(folder, _map_partition)


def _map_partition(folder: Path) -> tuple[list[str], int, ClientSplit]:
    """Memory-map the partition written by :func:`_write_partition` into ``folder``; raises one of
    :data:`~warmfed_flwr.data.cache_files.UNREADABLE` when a file is missing, truncated or not what it should be."""
    meta = json.loads((folder / "meta.json").read_text())
    if not isinstance(meta, dict) or not isinstance(meta["class_names"], list):
        raise ValueError("meta.json is not a partition record")
    arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in _ARRAYS}
    train = ImageArrayDataset(arrays["train_images"], arrays["train_labels"])
    test = ImageArrayDataset(arrays["test_images"], arrays["test_labels"])
    files = meta["native_train_files"]
    if files is not None and not isinstance(files, list):
        raise ValueError("meta.json lists no native train files")
    native = None if files is None else ImageFileDataset(files, arrays["train_labels"])
    split = ClientSplit(str(meta["name"]), str(meta["domain"]), train, test, native)
    return [str(name) for name in meta["class_names"]], int(meta["clients"]), split
