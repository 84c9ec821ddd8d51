"""Several clients per domain: each domain split among ``clients_per_domain`` clients that keep its name as their
domain, named ``<domain>-<i>`` (one client per domain keeps the plain domain name and today's split)."""

from __future__ import annotations

import re

import numpy as np

from warmfed_flwr.data.partition import (
    DomainArrays,
    SplitArrays,
    dirichlet_assign,
    partition_by_domain,
    split_train_test,
)
from warmfed_flwr.errors import DataError

DOMAIN_SPLITS = ("iid", "dirichlet")
"""How a domain is split among its clients: equal random shares, or Dirichlet label skew."""

_NUMBERED = re.compile(r"(.+)-\d+")


def client_name(domain: str, index: int, clients_per_domain: int) -> str:
    """The name of client ``index`` of ``domain``: the domain itself when it has one client, else ``<domain>-<i>``."""
    return domain if clients_per_domain == 1 else f"{domain}-{index}"


def client_domain(name: str) -> str:
    """The domain of a client named by :func:`client_name` with several clients per domain (``name`` itself when it
    carries no ``-<i>`` suffix)."""
    match = _NUMBERED.fullmatch(name)
    return match.group(1) if match else name


def iid_assign(count: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sorted indices per client: a permutation of ``range(count)`` drawn from ``rng``, cut by flwr-datasets'
    IidPartitioner into ``num_clients`` contiguous shares whose sizes differ by at most one."""
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    if count == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(num_clients)]
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = Dataset.from_dict({"idx": rng.permutation(count).astype(np.int64)})
    return [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_clients)]


def domain_shares(
    labels: np.ndarray, clients_per_domain: int, domain_split: str, alpha: float, seed: list[int]
) -> list[np.ndarray]:
    """Sorted indices of each of a domain's clients: every index in exactly one share (an empty domain gives
    empty shares). ``iid``: near-equal random shares; ``dirichlet``: label skew of concentration ``alpha``."""
    if domain_split not in DOMAIN_SPLITS:
        raise DataError(f"data.domain-split = {domain_split!r} is unknown; use {' or '.join(DOMAIN_SPLITS)}")
    if domain_split == "iid" or len(labels) == 0:
        return iid_assign(len(labels), clients_per_domain, np.random.default_rng(seed))
    partitioner_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    return dirichlet_assign(labels, clients_per_domain, alpha, partitioner_seed, "data.clients-per-domain")


def partition_domain_clients(
    domains: dict[str, DomainArrays],
    clients_per_domain: int,
    domain_split: str,
    alpha: float,
    test_fraction: float,
    seed: int,
) -> list[SplitArrays]:
    """``clients_per_domain`` clients per domain, domain-major, each share split train/test like a whole domain.

    One client per domain is exactly :func:`partition_by_domain`. A domain with no images (a domain that
    ``load_client`` did not decode) gives empty clients, so every other domain's clients stay the same.
    """
    if clients_per_domain == 1:
        return partition_by_domain(domains, test_fraction, seed)
    clients = []
    for i, (domain, arrays) in enumerate(domains.items()):
        try:
            shares = domain_shares(arrays.labels, clients_per_domain, domain_split, alpha, [seed, i, 4])
        except DataError as exc:
            raise DataError(f"domain {domain}: {exc}") from exc
        for j, share in enumerate(shares):
            rng = np.random.default_rng([seed, i, 5, j])
            clients.append(split_train_test(client_name(domain, j, clients_per_domain), domain, arrays.take(share),
                                            test_fraction, rng))
    return clients
