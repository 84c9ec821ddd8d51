"""Tests for the per-client data path: load_client's disk cache, uint8 datasets, native-resolution originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from PIL import Image
from torch.utils.data import TensorDataset

from tests.fake_digits import install_fake_digits
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import (
    ClientSplit,
    ImageArrayDataset,
    as_tensor_dataset,
    digits,
    load_benchmark,
    load_client,
    load_clients,
    loading,
)
from warmfed_flwr.data.partition import DomainArrays
from warmfed_flwr.generative.synthesis import synthesis_key
from warmfed_flwr.learning.models import build_model
from warmfed_flwr.learning.training import get_weights, train_epochs
from warmfed_flwr.methods.round0_upload import dataset_key

SIZE = 8


@pytest.fixture
def fake_digits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the digits domain builders with fast random ones; returns the domains built, in order."""
    return install_fake_digits(monkeypatch, [50 + 10 * i for i in range(len(digits.DOMAINS))], shuffle_labels=False)


def _assert_same_split(mine, reference) -> None:
    assert (mine.name, mine.domain) == (reference.name, reference.domain)
    for a, b in ((mine.train, reference.train), (mine.test, reference.test)):
        assert a.images.dtype == np.uint8 and np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)


def _context(cache: Path, partition_id: int) -> Context:
    run_config = {"cache-dir": str(cache), "data.image-size": SIZE, "algorithm": "fedavg"}
    return Context(run_id=0, node_id=0, node_config={"partition-id": partition_id, "num-partitions": 4},
                   state=RecordDict(), run_config=run_config)


def test_client_fn_decodes_and_holds_only_its_own_domain(tmp_path: Path, fake_digits: list[str]) -> None:
    from warmfed_flwr.client_app import client_fn

    client = client_fn(_context(tmp_path, 2)).numpy_client
    assert fake_digits == ["fonts"]
    assert sorted(p.name for p in (tmp_path / "data").glob("*.npz")) == ["digits-v1-fonts-8.npz"]
    assert client.split.name == "fonts" and len(client.split.train) + len(client.split.test) == 70
    assert isinstance(client.split.train.images, np.memmap) and client.split.train.images.dtype == np.uint8
    client_fn(_context(tmp_path, 2))
    assert fake_digits == ["fonts"]


@pytest.mark.parametrize("partition", ["domain", "dirichlet"])
def test_cached_partition_equals_load_benchmark(tmp_path: Path, fake_digits: list[str], partition: str) -> None:
    cfg = DataConfig(image_size=SIZE, partition=partition, num_clients=4 if partition == "domain" else 3,
                     max_per_domain=45, test_fraction=0.25)
    reference = load_benchmark(cfg, seed=5, cache_dir=tmp_path)
    for p, expected in enumerate(reference.clients):
        class_names, split = load_client(cfg, 5, tmp_path, p)
        assert class_names == reference.class_names
        _assert_same_split(split, expected)
        assert split.native_train is None
    server = load_clients(cfg, 5, tmp_path)
    assert [c.name for c in server.clients] == [c.name for c in reference.clients]
    assert all(isinstance(c.test.images, np.memmap) for c in server.clients)


def test_second_call_reads_the_cache(tmp_path: Path, fake_digits: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(image_size=SIZE, partition="dirichlet", num_clients=3)
    _, first = load_client(cfg, 0, tmp_path, 1)
    assert sorted(fake_digits) == sorted(digits.DOMAINS)

    def no_loading(*args, **kwargs):
        raise AssertionError("the cached partition was rebuilt")

    monkeypatch.setattr(loading, "load_domains", no_loading)
    for p in (1, 0, 2):
        load_client(cfg, 0, tmp_path, p)
    _, again = load_client(cfg, 0, tmp_path, 1)
    _assert_same_split(again, first)
    assert isinstance(again.train.images, np.memmap) and again.train.images.dtype == np.uint8
    with pytest.raises(AssertionError, match="rebuilt"):
        load_client(cfg, 1, tmp_path, 1)


def test_unreadable_cached_partition_is_rebuilt(tmp_path: Path, fake_digits: list[str]) -> None:
    cfg = DataConfig(image_size=SIZE)
    _, mapped = load_client(cfg, 0, tmp_path, 3)
    first = ClientSplit(mapped.name, mapped.domain, *(ImageArrayDataset(np.array(d.images), np.array(d.labels))
                                                      for d in (mapped.train, mapped.test)))
    del mapped  # truncating a file under a live memory map would crash its reader
    [cached] = (tmp_path / "clients").glob("digits-*/p3/train_images.npy")
    cached.write_bytes(cached.read_bytes()[:200])
    _, again = load_client(cfg, 0, tmp_path, 3)
    _assert_same_split(again, first)


def test_uint8_items_train_exactly_like_the_float_tensor_dataset() -> None:
    rng = np.random.default_rng(0)
    arrays = DomainArrays(rng.integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8), np.arange(40) % 3)
    mine, old = ImageArrayDataset(arrays.images, arrays.labels), as_tensor_dataset(arrays)
    image, label = mine[7]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE) and label.dtype == torch.int64
    assert torch.equal(image, old[7][0]) and int(label) == int(old[7][1])
    weights = []
    for dataset in (mine, old):
        torch.manual_seed(0)
        model = build_model(resolve({}).model, 3)
        train_epochs(model, dataset, epochs=1, lr=0.05, batch_size=16, device=torch.device("cpu"), seed=3)
        weights.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    assert dataset_key("round-0", mine, 3) == synthesis_key("round-0", old.tensors, 3)
    assert dataset_key(TensorDataset(*old.tensors)) == synthesis_key(old.tensors)


def _write_tree(root: Path) -> None:
    """Two domains of two classes, every image a different size and colour."""
    for d, domain in enumerate(("photo", "sketch")):
        for c, name in enumerate(("cat", "dog")):
            for i in range(4):
                folder = root / domain / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20 + 5 * i, 14 + 3 * c), (60 * d + 10 * i, 120 * c, 70)).save(folder / f"{i}.png")


def test_imagefolder_client_reads_its_domain_and_keeps_its_originals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    _write_tree(root)
    opened: list[str] = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    cfg = DataConfig(source="imagefolder", path=str(root), domains="photo,sketch", num_clients=2, image_size=SIZE,
                     test_fraction=0.25)
    monkeypatch.setattr(Image, "open", spy)
    class_names, split = load_client(cfg, 0, tmp_path / "cache", 1)
    assert class_names == ["cat", "dog"] and split.name == "sketch"
    assert opened and all("/sketch/" in path for path in opened)
    monkeypatch.setattr(Image, "open", real_open)
    _assert_same_split(split, load_benchmark(cfg, 0, tmp_path / "cache").clients[1])

    native = split.native_train
    assert native is not None and len(native) == len(split.train)
    for i, path in enumerate(native.paths):
        image, label = native[i]
        with Image.open(path) as original:
            assert image.shape == (3, original.height, original.width)
            resized = np.asarray(original.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            rgb = torch.from_numpy(np.array(original.convert("RGB")))
        assert np.array_equal(resized, split.train.images[i]) and int(label) == int(split.train.labels[i])
        assert torch.equal(image, rgb.permute(2, 0, 1) / 255)
