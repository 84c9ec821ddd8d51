"""Load a data source's domains and split them into clients: the whole benchmark at once, and the public pool."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch.utils.data import TensorDataset

from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import camelyon, digits, domainnet, hub, imagefolder
from warmfed_flwr.data.datasets import Benchmark, ClientSplit, ImageArrayDataset, as_tensor_dataset
from warmfed_flwr.data.domain_clients import partition_domain_clients
from warmfed_flwr.data.partition import DomainArrays, SplitArrays, cap_domains, partition_dirichlet
from warmfed_flwr.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_DOMAINS = DataConfig().domain_list()
FOLDER_LAYOUTS = {
    "imagefolder": "a <root>/<domain>/<class>/<image> tree",
    "camelyon17": "the WILDS camelyon17_v1.0 folder (see docs/data.md)",
    "domainnet": "the DomainNet root with its split files (see docs/data.md)",
}
"""What ``data.path`` must hold for each source read from a folder."""


def default_cache_dir() -> Path:
    """$WARMFED_CACHE, else $XDG_CACHE_HOME/warmfed-flwr, else ~/.cache/warmfed-flwr (absolute)."""
    if os.environ.get("WARMFED_CACHE"):
        path = Path(os.environ["WARMFED_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]) / "warmfed-flwr"
    else:
        path = Path.home() / ".cache" / "warmfed-flwr"
    return path.expanduser().absolute()


def load_domains(cfg: DataConfig, cache_dir: Path) -> tuple[dict[str, DomainArrays], list[str]]:
    """Every selected domain of ``cfg.source`` as uint8 arrays, and the class names."""
    if cfg.class_list() and cfg.source != "domainnet":
        raise DataError(f"data.classes is only read by data.source=domainnet, not {cfg.source}; set it to \"\"")
    if cfg.source in FOLDER_LAYOUTS and not cfg.path:
        raise DataError(f"data.source={cfg.source} needs data.path: {FOLDER_LAYOUTS[cfg.source]}")
    if cfg.source == "camelyon17":
        return camelyon.load_domains(
            cfg.path, cfg.domain_list(), DEFAULT_DOMAINS, cfg.image_size, cache_dir, cfg.on_corrupt
        )
    if cfg.source == "domainnet":
        log.info("DomainNet uses its official train/test split files; data.test-fraction is not used")
        return domainnet.load_domains(
            cfg.path, cfg.domain_list(), DEFAULT_DOMAINS, cfg.class_list(), cfg.image_size, cache_dir, cfg.on_corrupt
        )
    if cfg.source == "digits":
        return digits.load_domains(cfg.domain_list(), cfg.image_size, cache_dir), list(digits.CLASS_NAMES)
    if cfg.source == "imagefolder":
        return imagefolder.load_domains(
            cfg.path, cfg.domain_list(), DEFAULT_DOMAINS, cfg.image_size, cache_dir, cfg.on_corrupt
        )
    if cfg.source == "hub":
        return hub.load_domains(
            cfg.hub_id, cfg.hub_image_column, cfg.hub_label_column, cfg.hub_domain_column, cfg.image_size,
            cfg.domain_list(), DEFAULT_DOMAINS, cache_dir, cfg.hub_config,
        )
    raise DataError(f"data.source = {cfg.source!r} is unknown; use digits, imagefolder, hub, camelyon17 or domainnet")


def partition_domains(domains: dict[str, DomainArrays], cfg: DataConfig, seed: int) -> list[SplitArrays]:
    """Cap the domains and split them into clients by ``cfg.partition`` (deterministic given ``seed``); the domain
    partition gives ``cfg.clients_per_domain`` clients per domain, domain-major."""
    domains = cap_domains(domains, cfg.max_per_domain, seed)
    if cfg.partition == "domain":
        splits = partition_domain_clients(domains, cfg.clients_per_domain, cfg.domain_split, cfg.dirichlet_alpha,
                                          cfg.test_fraction, seed)
        if cfg.num_clients != len(splits):
            log.warning("data.num-clients = %d but the domain partition gives %d clients (%d per domain)",
                        cfg.num_clients, len(splits), cfg.clients_per_domain)
        return splits
    if cfg.partition == "dirichlet":
        return partition_dirichlet(domains, cfg.num_clients, cfg.dirichlet_alpha, cfg.test_fraction, seed)
    raise DataError(f"data.partition = {cfg.partition!r} is unknown; use domain or dirichlet")


def load_benchmark(cfg: DataConfig, seed: int, cache_dir: Path) -> Benchmark:
    """Load all of ``cfg.source`` and split it into clients by ``cfg.partition`` (deterministic given ``seed``).

    Every client's images are held at once (uint8); a Flower app loads one partition with ``load_client``.
    """
    cache_dir = Path(cache_dir).expanduser().absolute()
    domains, class_names = load_domains(cfg, cache_dir)
    clients = [
        ClientSplit(s.name, s.domain, ImageArrayDataset(s.train.images, s.train.labels),
                    ImageArrayDataset(s.test.images, s.test.labels))
        for s in partition_domains(domains, cfg, seed)
    ]
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
