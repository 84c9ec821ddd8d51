"""Tests for several clients per domain (data.clients-per-domain, data.domain-split): the partition, the per-client
cache, the config cross-checks and the per-domain evaluation record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status

from strategies.baselines import FedAvgStrategy
from strategies.reports import evaluation_record
from tests.fake_digits import install_fake_digits
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import digits, load_benchmark, load_client, loading
from warmfed_flwr.data.client_cache import _partitions_dir
from warmfed_flwr.data.domain_clients import client_domain, client_name, domain_shares, partition_domain_clients
from warmfed_flwr.data.partition import DomainArrays, cap_domains, stratified_split
from warmfed_flwr.errors import ConfigError, DataError
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.wire import protocol

SIZE = 8
DOMAINS = list(digits.DOMAINS)  # mnist, digits, fonts, mnistm
COUNTS = [200 + 20 * i for i in range(len(DOMAINS))]


@pytest.fixture
def fake_digits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the digits domain builders with fast random ones; returns the domains built, in order."""
    return install_fake_digits(monkeypatch, COUNTS, shuffle_labels=True)


def _indexed_domains(labels_seed: int = 0) -> dict[str, DomainArrays]:
    """Domains whose 'images' are global indices (domain i holds [offset_i, offset_i + count_i)), 10 classes each."""
    rng = np.random.default_rng(labels_seed)
    domains, offset = {}, 0
    for name, count in zip(DOMAINS, COUNTS, strict=True):
        labels = rng.permutation(np.arange(count, dtype=np.int64) % 10)
        domains[name] = DomainArrays(np.arange(offset, offset + count, dtype=np.int64), labels)
        offset += count
    return domains


def _held(split) -> np.ndarray:
    return np.concatenate([split.train.images, split.test.images])


def _label_skew(shares: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each share's label distribution and the whole domain's."""
    whole = np.bincount(labels, minlength=10) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[s], minlength=10) / len(s) - whole).sum() for s in shares]))


# ---------------------------------------------------------------- the partition


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_each_domain_is_split_disjointly_and_completely_among_its_clients(split: str) -> None:
    cfg = DataConfig(clients_per_domain=3, domain_split=split, dirichlet_alpha=0.3, max_per_domain=150,
                     num_clients=12, test_fraction=0.25)
    domains = _indexed_domains()
    clients = loading.partition_domains(domains, cfg, seed=4)
    assert [c.name for c in clients] == [f"{d}-{i}" for d in DOMAINS for i in range(3)]
    assert [c.domain for c in clients] == [d for d in DOMAINS for _ in range(3)]
    capped = cap_domains(domains, 150, seed=4)
    for d, domain in enumerate(DOMAINS):
        own = clients[3 * d:3 * d + 3]
        held = [_held(c) for c in own]
        assert all(len(h) > 0 and len(c.train) > 0 and len(c.test) > 0 for h, c in zip(held, own, strict=True))
        assert all(np.isin(h, domains[domain].images).all() for h in held), "a client holds another domain"
        pooled = np.concatenate(held)
        assert len(np.unique(pooled)) == len(pooled), "an image lands in two clients (or train and test)"
        assert np.array_equal(np.sort(pooled), np.sort(capped[domain].images))
        label_of = dict(zip(domains[domain].images.tolist(), domains[domain].labels.tolist(), strict=True))
        for c in own:
            assert [label_of[i] for i in c.train.images.tolist()] == c.train.labels.tolist()
    if split == "iid":
        sizes = [len(_held(c)) for c in clients]
        assert sizes == [50] * 12
    again = loading.partition_domains(domains, cfg, seed=4)
    assert all(np.array_equal(a.train.images, b.train.images) for a, b in zip(clients, again, strict=True))


def test_iid_shares_are_near_equal_and_dirichlet_shares_are_label_skewed() -> None:
    labels = np.random.default_rng(1).permutation(np.arange(601) % 10)
    iid = domain_shares(labels, 4, "iid", 0.1, [0, 0, 4])
    assert sorted(len(s) for s in iid) == [150, 150, 150, 151]
    assert np.array_equal(np.sort(np.concatenate(iid)), np.arange(601))
    skewed = domain_shares(labels, 4, "dirichlet", 0.1, [0, 0, 4])
    assert np.array_equal(np.sort(np.concatenate(skewed)), np.arange(601))
    assert min(len(s) for s in skewed) >= 2
    assert _label_skew(skewed, labels) > 0.3 > 0.1 > _label_skew(iid, labels)


def test_one_client_per_domain_is_todays_partition() -> None:
    domains = _indexed_domains(labels_seed=3)
    for split in ("iid", "dirichlet"):
        clients = partition_domain_clients(domains, 1, split, 0.5, 0.2, seed=9)
        assert [(c.name, c.domain) for c in clients] == [(d, d) for d in DOMAINS]
        for i, (client, arrays) in enumerate(zip(clients, domains.values(), strict=True)):
            train_idx, test_idx = stratified_split(arrays.labels, 0.2, np.random.default_rng([9, i, 2]))
            assert np.array_equal(client.train.images, arrays.images[train_idx])
            assert np.array_equal(client.test.images, arrays.images[test_idx])
            assert np.array_equal(client.train.labels, arrays.labels[train_idx])


def test_predefined_test_split_holds_inside_each_share() -> None:
    labels = np.arange(90, dtype=np.int64) % 3
    is_test = np.arange(90) % 4 == 0
    arrays = DomainArrays(np.arange(90, dtype=np.int64), labels, is_test)
    clients = partition_domain_clients({"a": arrays}, 2, "iid", 0.5, 0.2, seed=0)
    for client in clients:
        assert not is_test[client.train.images].any() and is_test[client.test.images].all()
    assert sorted(np.concatenate([_held(c) for c in clients]).tolist()) == list(range(90))


def test_too_small_domain_for_a_dirichlet_split_names_the_domain_and_key() -> None:
    arrays = DomainArrays(np.arange(12, dtype=np.int64), np.arange(12, dtype=np.int64) % 3)
    with pytest.raises(DataError, match="domain fonts:.*data.clients-per-domain"):
        partition_domain_clients({"fonts": arrays}, 5, "dirichlet", 0.5, 0.2, seed=0)


def test_client_names_round_trip_to_their_domain() -> None:
    assert client_name("mnist", 0, 1) == "mnist"
    assert [client_name("site-2", i, 3) for i in range(3)] == ["site-2-0", "site-2-1", "site-2-2"]
    assert client_domain("site-2-1") == "site-2" and client_domain("mnist-10") == "mnist"
    assert client_domain("mnist") == "mnist"


# ---------------------------------------------------------------- the per-client cache


def _assert_same_split(mine, reference) -> None:
    assert (mine.name, mine.domain) == (reference.name, reference.domain)
    for a, b in ((mine.train, reference.train), (mine.test, reference.test)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize(("split", "partition_id"), [("iid", 7), ("dirichlet", 4)])
def test_load_client_decodes_only_its_domain_and_equals_load_benchmark(
    tmp_path: Path, fake_digits: list[str], split: str, partition_id: int
) -> None:
    cfg = DataConfig(image_size=SIZE, clients_per_domain=3, domain_split=split, dirichlet_alpha=0.5,
                     max_per_domain=120, num_clients=12, test_fraction=0.25)
    class_names, mine = load_client(cfg, 5, tmp_path / "client", partition_id)
    own_domain = DOMAINS[partition_id // 3]
    assert fake_digits == [own_domain]
    assert mine.name == f"{own_domain}-{partition_id % 3}" and mine.domain == own_domain
    reference = load_benchmark(cfg, 5, tmp_path / "benchmark")
    assert class_names == reference.class_names and len(reference.clients) == 12
    _assert_same_split(mine, reference.clients[partition_id])
    decoded = len(fake_digits)
    sibling = partition_id - partition_id % 3
    _, first_of_domain = load_client(cfg, 5, tmp_path / "client", sibling)
    _assert_same_split(first_of_domain, reference.clients[sibling])
    assert len(fake_digits) == decoded, "a sibling client decoded its domain again instead of reading the cache"


def test_partition_id_beyond_the_clients_is_refused(tmp_path: Path, fake_digits: list[str]) -> None:
    cfg = DataConfig(image_size=SIZE, clients_per_domain=2, num_clients=8)
    with pytest.raises(DataError, match="partition-id 8 is out of range.*8 clients \\(2 per domain\\)"):
        load_client(cfg, 0, tmp_path, 8)
    assert fake_digits == []


def test_cache_key_reads_the_many_client_keys_only_above_one_client_per_domain() -> None:
    def key(**settings) -> str:
        return _partitions_dir(DataConfig(**settings), 0, Path("/cache")).name

    # The key of the default config before data.clients-per-domain and data.domain-split existed.
    assert key() == "digits-999113537b90e598"
    assert key(domain_split="dirichlet") == key()
    assert len({key(), key(clients_per_domain=2), key(clients_per_domain=3),
                key(clients_per_domain=2, domain_split="dirichlet")}) == 4


# ---------------------------------------------------------------- config and evaluation


def test_config_cross_checks_for_clients_per_domain() -> None:
    cfg = resolve({"data.clients-per-domain": 2, "data.num-clients": 8})
    assert cfg.data.clients_per_domain == 2
    with pytest.raises(ConfigError) as info:
        resolve({"data.clients-per-domain": 2})
    message = str(info.value)
    assert "\n" not in message
    for name in ("'data.num-clients' = 4", "'data.domains' (4)", "'data.clients-per-domain' (2) = 8"):
        assert name in message
    with pytest.raises(ConfigError, match="'data.clients-per-domain' = 3 needs 'data.partition' = 'domain'"):
        resolve({"data.partition": "dirichlet", "data.clients-per-domain": 3})


def _eval(name: str, accuracy: float, tested: int) -> tuple:
    res = EvaluateRes(Status(Code.OK, ""), 0.5, tested,
                      {protocol.CLIENT_NAME: name, "global_acc": accuracy, "global_loss": 0.5})
    return SimpleNamespace(cid=name), res


def test_evaluation_records_each_domain_over_its_clients() -> None:
    results = [_eval("mnist-0", 0.5, 10), _eval("mnist-1", 1.0, 30), _eval("fonts-0", 0.2, 20),
               _eval("fonts-1", 0.4, 20)]
    record = evaluation_record(results, clients_per_domain=2)
    assert record["global_domain_acc_mnist"] == pytest.approx(0.875)
    assert record["global_domain_acc_fonts"] == pytest.approx(0.3)
    assert record["global_acc_mnist-1"] == 1.0
    assert record["global_acc_pooled"] == pytest.approx((5 + 30 + 4 + 8) / 80)
    single = evaluation_record([_eval("mnist", 0.5, 10), _eval("fonts", 1.0, 10)])
    assert not any(k.startswith("global_domain_acc_") for k in single)


def test_strategy_records_domains_when_the_config_has_several_clients_per_domain(tmp_path: Path) -> None:
    cfg = resolve({"algorithm": "fedavg", "data.clients-per-domain": 2, "data.num-clients": 8})
    strategy = FedAvgStrategy(cfg=cfg, recorder=RunRecorder(tmp_path / "run", cfg.to_flat()), num_rounds=3)
    strategy.aggregate_evaluate(1, [_eval("mnist-0", 0.5, 10), _eval("mnist-1", 1.0, 30)], [])
    metrics = strategy.recorder.rounds[-1]
    assert metrics["global_domain_acc_mnist"] == pytest.approx(0.875)

