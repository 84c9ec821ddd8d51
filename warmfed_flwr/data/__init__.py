"""Client datasets: the offline digits benchmark, local ImageFolder trees and hub datasets, partitioned into clients.

``load_benchmark`` returns one ``ClientSplit`` per Flower partition id (one per domain, or Dirichlet
label-skewed shares of all domains pooled); ``load_public_pool`` returns the public data that
pretrains the generator. Images are float32 [N,3,S,S] in [0,1], labels int64.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from warmfed_flwr.config import DataConfig
from warmfed_flwr.data import digits, hub, imagefolder
from warmfed_flwr.data.partition import DomainArrays, cap_domains, partition_by_domain, partition_dirichlet
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "Benchmark",
    "ClientSplit",
    "as_tensor_dataset",
    "default_cache_dir",
    "load_benchmark",
    "load_public_pool",
]

DEFAULT_DOMAINS = DataConfig().domain_list()


@dataclass
class ClientSplit:
    """One client's private data: images float32 [N,3,S,S] in [0,1] and int64 labels."""

    name: str
    domain: str
    train: TensorDataset
    test: TensorDataset


@dataclass
class Benchmark:
    """The class names (words used in prompts) and the clients, indexed by Flower partition id."""

    class_names: list[str]
    clients: list[ClientSplit]


def default_cache_dir() -> Path:
    """$WARMFED_CACHE, else $XDG_CACHE_HOME/warmfed-flwr, else ~/.cache/warmfed-flwr (absolute)."""
    if os.environ.get("WARMFED_CACHE"):
        path = Path(os.environ["WARMFED_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]) / "warmfed-flwr"
    else:
        path = Path.home() / ".cache" / "warmfed-flwr"
    return path.expanduser().absolute()


def as_tensor_dataset(arrays: DomainArrays) -> TensorDataset:
    """uint8 [N,S,S,3] images and labels as a TensorDataset of float32 [N,3,S,S] in [0,1] and int64 [N]."""
    images = torch.from_numpy(np.ascontiguousarray(arrays.images)).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.from_numpy(np.ascontiguousarray(arrays.labels, dtype=np.int64))
    return TensorDataset(images.contiguous(), labels)


def _load_domains(cfg: DataConfig, cache_dir: Path) -> tuple[dict[str, DomainArrays], list[str]]:
    if cfg.source == "digits":
        return digits.load_domains(cfg.domain_list(), cfg.image_size, cache_dir), list(digits.CLASS_NAMES)
    if cfg.source == "imagefolder":
        if not cfg.path:
            raise DataError("data.source=imagefolder needs data.path: a <root>/<domain>/<class>/<image> tree")
        return imagefolder.load_domains(
            cfg.path, cfg.domain_list(), DEFAULT_DOMAINS, cfg.image_size, cache_dir, cfg.on_corrupt
        )
    if cfg.source == "hub":
        return hub.load_domains(
            cfg.hub_id, cfg.hub_image_column, cfg.hub_label_column, cfg.hub_domain_column, cfg.image_size,
            cfg.domain_list(), DEFAULT_DOMAINS, cache_dir,
        )
    raise DataError(f"data.source = {cfg.source!r} is unknown; use digits, imagefolder or hub")


def load_benchmark(cfg: DataConfig, seed: int, cache_dir: Path) -> Benchmark:
    """Load ``cfg.source`` and split it into clients by ``cfg.partition`` (deterministic given ``seed``)."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    domains, class_names = _load_domains(cfg, cache_dir)
    domains = cap_domains(domains, cfg.max_per_domain, seed)
    if cfg.partition == "domain":
        splits = partition_by_domain(domains, cfg.test_fraction, seed)
        if cfg.num_clients != len(splits):
            log.warning("data.num-clients = %d but the domain partition gives %d clients (one per domain)",
                        cfg.num_clients, len(splits))
    elif cfg.partition == "dirichlet":
        splits = partition_dirichlet(domains, cfg.num_clients, cfg.dirichlet_alpha, cfg.test_fraction, seed)
    else:
        raise DataError(f"data.partition = {cfg.partition!r} is unknown; use domain or dirichlet")
    clients = [ClientSplit(s.name, s.domain, as_tensor_dataset(s.train), as_tensor_dataset(s.test)) for s in splits]
    log.info(
        "%s benchmark: %d classes, clients %s",
        cfg.source, len(class_names), ", ".join(f"{c.name}={len(c.train)}/{len(c.test)}" for c in clients),
    )
    return Benchmark(class_names, clients)


def load_public_pool(source: str, image_size: int, cache_dir: Path) -> tuple[TensorDataset, list[str]]:
    """The public pool that pretrains the generator: 'digits' (2,000 public MNIST digits) or a root/class/image path."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    if source == "digits":
        return as_tensor_dataset(digits.load_public(image_size, cache_dir)), list(digits.CLASS_NAMES)
    arrays, class_names = imagefolder.load_single_domain(source, image_size, cache_dir)
    return as_tensor_dataset(arrays), class_names
