"""Array-level building blocks shared by the loaders: domain arrays, the npz cache, splits and partitions.

Everything here works on uint8 NHWC image arrays and int64 label arrays; the package ``__init__``
turns the results into torch datasets. Dirichlet label skew comes from
flwr-datasets' ``DirichletPartitioner``.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from warmfed_flwr.data.cache_files import ArrayCheck, load_npz, save_npz_atomic
from warmfed_flwr.errors import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX systems build without a lock
    fcntl = None


MIXED_DOMAIN = "mixed"
"""The domain of a client share that holds images of several domains."""


@dataclass
class DomainArrays:
    """The images of one domain: uint8 [N,S,S,3], int64 labels [N] and an optional predefined test mask [N].

    ``is_test`` (bool, e.g. a dataset's official split) replaces the random train/test split of
    ``partition_by_domain``; None means no predefined split.
    """

    images: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.is_test is not None and (self.is_test.dtype != np.bool_ or self.is_test.shape != self.labels.shape):
            raise ValueError(f"is_test must be a bool array of shape {self.labels.shape}, got {self.is_test.dtype} "
                             f"{self.is_test.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> DomainArrays:
        """The samples at ``indices``, in that order (with their predefined split, if any)."""
        is_test = None if self.is_test is None else self.is_test[indices]
        return DomainArrays(self.images[indices], self.labels[indices], is_test)


@dataclass
class SplitArrays:
    """One client's share before it becomes tensors."""

    name: str
    domain: str
    train: DomainArrays
    test: DomainArrays


def cache_key(*parts: object) -> str:
    """A short stable hash of ``parts`` for cache file names."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:16]


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` so concurrent processes build a cache entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def cached_arrays(
    path: Path, build: Callable[[], dict[str, np.ndarray]], check: ArrayCheck | None = None
) -> dict[str, np.ndarray]:
    """The arrays cached at ``path``; on a miss (no file, or one unreadable or failing ``check``: it is removed),
    ``build`` them once (other processes wait) and cache them atomically."""
    cached = load_npz(path, check)
    if cached is not None:
        return cached
    with build_lock(path):
        cached = load_npz(path, check)
        if cached is not None:
            return cached
        arrays = build()
        save_npz_atomic(path, **arrays)
        return arrays


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize uint8 [N,H,W,C] images to [N,size,size,C] (antialiased when shrinking)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    shrink = images.shape[1] > size or images.shape[2] > size
    out = functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """Repeat uint8 [N,H,W] grey images into [N,H,W,3]."""
    return np.repeat(images[..., None], 3, axis=-1)


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices (rest, part) with about ``fraction`` of every class in ``part``."""
    part: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    rest: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_part = int(round(len(idx) * fraction))
        if fraction < 1.0:
            n_part = min(n_part, len(idx) - 1)
        part.append(idx[:n_part])
        rest.append(idx[n_part:])
    part_idx, rest_idx = np.concatenate(part), np.concatenate(rest)
    if len(part_idx) == 0 and len(rest_idx) > 1 and fraction > 0:
        part_idx, rest_idx = rest_idx[:1], rest_idx[1:]
    return rng.permutation(rest_idx).astype(np.int64), rng.permutation(part_idx).astype(np.int64)


def stratified_subsample(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` samples keeping the class proportions (every class kept when possible)."""
    if count >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * count / len(labels)).astype(int)
    quota = np.maximum(quota, np.minimum(1, counts)) if count >= len(classes) else quota
    while quota.sum() > count:
        quota[np.argmax(quota)] -= 1
    order = np.argsort(-(counts * count / len(labels) - quota), kind="stable")
    for i in order:
        if quota.sum() >= count:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == cls))[:q] for cls, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cap_domains(domains: dict[str, DomainArrays], max_per_domain: int, seed: int) -> dict[str, DomainArrays]:
    """Cap every domain at ``max_per_domain`` samples (0 = no cap) with a seeded stratified subsample."""
    if max_per_domain <= 0:
        return domains
    capped = {}
    for i, (name, arrays) in enumerate(domains.items()):
        rng = np.random.default_rng([seed, i, 1])
        capped[name] = arrays.take(stratified_subsample(arrays.labels, max_per_domain, rng))
    return capped


def partition_by_domain(domains: dict[str, DomainArrays], test_fraction: float, seed: int) -> list[SplitArrays]:
    """One client per domain, each split into train/test by its predefined ``is_test`` or else by ``test_fraction``.

    The ``test_fraction`` split is stratified and seeded.
    """
    return [split_train_test(name, name, arrays, test_fraction, np.random.default_rng([seed, i, 2]))
            for i, (name, arrays) in enumerate(domains.items())]


def split_train_test(
    name: str, domain: str, arrays: DomainArrays, test_fraction: float, rng: np.random.Generator
) -> SplitArrays:
    """Client ``name`` of ``domain`` holding ``arrays``, split by their predefined ``is_test`` or else by a
    stratified ``test_fraction`` split drawn from ``rng``."""
    if arrays.is_test is not None:
        train_idx, test_idx = np.flatnonzero(~arrays.is_test), np.flatnonzero(arrays.is_test)
    else:
        train_idx, test_idx = stratified_split(arrays.labels, test_fraction, rng)
    return SplitArrays(name, domain, arrays.take(train_idx), arrays.take(test_idx))


def dirichlet_assign(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, clients_key: str = "data.num-clients"
) -> list[np.ndarray]:
    """Indices per client from flwr-datasets' DirichletPartitioner over ``labels`` (sorted per client), every
    client holding at least 2; errors name ``clients_key``, the config key that sets ``num_clients``."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    total = len(labels)
    min_size = max(2, min(10, total // (2 * num_clients)))
    if total < min_size * num_clients:
        raise DataError(
            f"dirichlet partition: {total} samples cannot fill {num_clients} clients; "
            f"lower {clients_key} or raise data.max-per-domain"
        )
    table = Dataset.from_dict({"label": labels.astype(np.int64), "idx": np.arange(total, dtype=np.int64)})
    partitioner = DirichletPartitioner(
        num_partitions=num_clients, partition_by="label", alpha=alpha, min_partition_size=min_size, seed=seed
    )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_clients)
            ]
    except ValueError as exc:
        raise DataError(
            f"dirichlet partition of {total} samples into {num_clients} clients with alpha={alpha} failed ({exc}); "
            f"raise data.dirichlet-alpha or lower {clients_key}"
        ) from exc
    return parts


def partition_dirichlet(
    domains: dict[str, DomainArrays], num_clients: int, alpha: float, test_fraction: float, seed: int
) -> list[SplitArrays]:
    """Pool all domains, give each client a Dirichlet label-skewed share, split each share train/test."""
    names = list(domains)
    pooled = DomainArrays(
        np.concatenate([domains[n].images for n in names]), np.concatenate([domains[n].labels for n in names])
    )
    origin = np.concatenate([np.full(len(domains[n]), i) for i, n in enumerate(names)])
    clients = []
    for cid, idx in enumerate(dirichlet_assign(pooled.labels, num_clients, alpha, seed)):
        share = pooled.take(idx)
        present = sorted({names[o] for o in np.unique(origin[idx])})
        domain = present[0] if len(present) == 1 else MIXED_DOMAIN
        name = f"{names[0]}-p{cid}" if len(names) == 1 else f"client-{cid}"
        train_idx, test_idx = stratified_split(share.labels, test_fraction, np.random.default_rng([seed, cid, 3]))
        clients.append(SplitArrays(name, domain, share.take(train_idx), share.take(test_idx)))
    return clients


def select_domains(available: Iterable[str], requested: list[str], default: list[str], where: str) -> list[str]:
    """The domains to load: ``requested`` if all exist, else every available one if ``requested`` is the default."""
    available = sorted(available)
    missing = [d for d in requested if d not in available]
    if not missing:
        return requested
    if requested == default:
        return available
    raise DataError(
        f"{where} has no domain(s) {', '.join(missing)}; set data.domains to some of: {', '.join(available)}"
    )
