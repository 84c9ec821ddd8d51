"""Class and image counts of a run's data: counted under ``data.path`` when it exists, else from
:data:`KNOWN_DATASETS` (sources stated)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class KnownDataset:
    """Published facts about a dataset: classes and images per domain (``train``: an official train split)."""

    classes: int
    images: dict[str, int]
    source: str
    train: dict[str, int] = field(default_factory=dict)


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "digits": KnownDataset(10, {"mnist": 1500, "digits": 1797, "fonts": 1500, "mnistm": 1500},
                           "this project's offline digits benchmark (docs/data.md)"),
    "office_caltech10": KnownDataset(
        10, {"amazon": 958, "caltech": 1123, "dslr": 157, "webcam": 295},
        "Office-Caltech10 (Gong et al., CVPR 2012; as used by FedBN): 2,533 images"),
    "pacs": KnownDataset(
        7, {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
        "PACS (Li et al., ICCV 2017): 9,991 images"),
    "domainnet345": KnownDataset(
        345, {"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500, "real": 172947,
              "sketch": 69128},
        "DomainNet cleaned split files (Peng et al., ICCV 2019): 586,575 images, official train split ~70 %",
        train={"clipart": 33525, "infograph": 36023, "painting": 50416, "quickdraw": 120750, "real": 120906,
               "sketch": 48212}),
    "camelyon17": KnownDataset(
        2, {"hospital0": 59436, "hospital1": 34904, "hospital2": 85054, "hospital3": 129838, "hospital4": 146722},
        "Camelyon17-WILDS (Koh et al., ICML 2021): 455,954 96 px patches from 5 hospitals"),
}
"""Used when ``data.path`` does not exist. A DomainNet class subset is estimated as its share of each domain."""


@dataclass(frozen=True)
class DataFacts:
    """Classes and per-domain image counts (total and train) and where they come from."""

    classes: int
    images: dict[str, int]
    train: dict[str, int]
    source: str


def _count_files(folder: Path) -> int:
    return sum(1 for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _from_path(cfg: DataConfig, root: Path) -> DataFacts | None:
    """Counts read from the dataset's folders, split files or metadata (None: no layout this knows)."""
    domains, wanted = cfg.domain_list(), set(_class_subset(cfg))
    images: dict[str, int] = {}
    train: dict[str, int] = {}
    classes: set[str] = set()
    if cfg.source == "imagefolder":
        for domain in domains:
            folders = [c for c in sorted((root / domain).iterdir()) if c.is_dir() and (not wanted or c.name in wanted)]
            classes.update(c.name for c in folders)
            images[domain] = sum(_count_files(c) for c in folders)
    elif cfg.source == "domainnet":
        for domain in domains:
            for split in ("train", "test"):
                lines = [line.split()[0] for line in (root / f"{domain}_{split}.txt").read_text().splitlines()
                         if line.strip()]
                lines = [line for line in lines if not wanted or Path(line).parts[1] in wanted]
                classes.update(Path(line).parts[1] for line in lines)
                images[domain] = images.get(domain, 0) + len(lines)
                if split == "train":
                    train[domain] = len(lines)
    elif cfg.source == "camelyon17" and (root / "metadata.csv").is_file():
        import csv

        with (root / "metadata.csv").open() as file:
            for row in csv.DictReader(file):
                domain = f"hospital{int(float(row['center']))}"
                images[domain] = images.get(domain, 0) + 1
                classes.add(row["tumor"])
    else:
        return None
    return DataFacts(len(classes), images, train, f"counted under {root}")


def _class_subset(cfg: DataConfig) -> list[str]:
    """The class folders ``data.classes`` keeps (only the domainnet source reads it)."""
    return cfg.class_list() if cfg.source == "domainnet" else []


def _known(cfg: DataConfig) -> DataFacts:
    """Counts from KNOWN_DATASETS, matched by source and domains."""
    domains, subset = cfg.domain_list(), _class_subset(cfg)
    for facts in KNOWN_DATASETS.values():
        if set(domains) <= set(facts.images):
            classes = len(subset) or facts.classes
            share = classes / facts.classes
            images = {d: math.ceil(facts.images[d] * share) for d in domains}
            train = {d: math.ceil(facts.train[d] * share) for d in domains if d in facts.train}
            source = facts.source + (f"; {classes} of its {facts.classes} classes estimated as that share of each "
                                     "domain" if subset else "")
            return DataFacts(classes, images, train, f"known facts: {source}")
    raise ConfigError(
        f"config key 'data.path' = '{cfg.path}' does not exist and warmfed-plan knows no dataset with the domains "
        f"'{cfg.domains}'; give the data's path so it can count the images"
    )


def data_facts(cfg: DataConfig) -> DataFacts:
    """Class and image counts: from ``data.path`` when it exists, else the known facts; capped by max-per-domain."""
    root = Path(cfg.path).expanduser() if cfg.path else None
    try:
        counted = _from_path(cfg, root) if root is not None and root.is_dir() else None
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"config key 'data.path' = '{cfg.path}': cannot count its images ({exc}); check the "
                          f"layout data.source = '{cfg.source}' expects") from exc
    facts = counted or _known(cfg)
    cap = cfg.max_per_domain or math.inf
    images = {d: int(min(n, cap)) for d, n in facts.images.items()}
    train = {d: int(min(facts.train.get(d, round(images[d] * (1 - cfg.test_fraction))), images[d]))
             for d in images}
    return DataFacts(facts.classes, images, train, facts.source)
