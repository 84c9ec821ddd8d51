"""Tests for warmfed_flwr.data: the digits benchmark, partitions, ImageFolder and hub loaders."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import (
    Benchmark,
    ClientSplit,
    default_cache_dir,
    digits,
    hub,
    load_benchmark,
    load_public_pool,
)
from warmfed_flwr.data.partition import dirichlet_assign, save_npz_atomic, stratified_split, stratified_subsample
from warmfed_flwr.errors import DataError

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding all four digits domains and the public pool at 32 px, built once."""
    cache = tmp_path_factory.mktemp("digits-cache")
    digits.load_domains(list(digits.DOMAINS), 32, cache)
    digits.load_public(32, cache)
    return cache


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


def _image_bytes(images: torch.Tensor) -> set[bytes]:
    return {image.tobytes() for image in _as_uint8(images)}


def _all_labels(client: ClientSplit) -> np.ndarray:
    return np.concatenate([client.train.tensors[1].numpy(), client.test.tensors[1].numpy()])


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _write_tree(
    root: Path,
    domains: tuple[str, ...] = ("photo", "sketch"),
    classes: tuple[str, ...] = ("big_dog", "cat"),
    per_class: int = 5,
) -> Path:
    """A tiny root/domain/class/image tree with PNG and JPEG files of varied sizes and modes."""
    for d, domain in enumerate(domains):
        for c, name in enumerate(classes):
            for i in range(per_class):
                suffix = ".jpg" if i % 2 else ".png"
                _write_image(root / domain / name / f"img{i}{suffix}", (40 * d + 10 * i, 200 * c, 90), (20 + 7 * i, 24))
    Image.new("L", (12, 12), 128).save(root / domains[0] / classes[0] / "grey.bmp")
    return root


# ---------------------------------------------------------------- digits benchmark


def test_digits_domain_partition_shapes_and_classes(digits_cache: Path) -> None:
    cfg = DataConfig(max_per_domain=200)
    bench = load_benchmark(cfg, seed=0, cache_dir=digits_cache)
    assert isinstance(bench, Benchmark)
    assert bench.class_names == DIGIT_WORDS
    assert [c.name for c in bench.clients] == ["mnist", "digits", "fonts", "mnistm"]
    assert [c.domain for c in bench.clients] == ["mnist", "digits", "fonts", "mnistm"]
    for client in bench.clients:
        for split in (client.train, client.test):
            images, labels = split.tensors
            assert images.dtype == torch.float32 and labels.dtype == torch.int64
            assert images.shape[1:] == (3, 32, 32) and len(images) == len(labels)
            assert 0.0 <= images.min() and images.max() <= 1.0
        assert len(client.train) + len(client.test) == 200
        assert len(client.test) == pytest.approx(40, abs=5)
        assert sorted(np.unique(client.train.tensors[1].numpy())) == list(range(10))
        assert sorted(np.unique(client.test.tensors[1].numpy())) == list(range(10))
        assert np.bincount(_all_labels(client), minlength=10).min() >= 15
        assert not _image_bytes(client.train.tensors[0]) & _image_bytes(client.test.tensors[0])


def test_digits_full_domain_sizes_and_fast_cache(digits_cache: Path) -> None:
    start = time.perf_counter()
    domains = digits.load_domains(list(digits.DOMAINS), 32, digits_cache)
    public = digits.load_public(32, digits_cache)
    assert time.perf_counter() - start < 1.0
    assert {name: len(arrays) for name, arrays in domains.items()} == {
        "mnist": 1500, "digits": 1797, "fonts": 1500, "mnistm": 1500
    }
    assert len(public) == 2000
    for arrays in [*domains.values(), public]:
        assert arrays.images.dtype == np.uint8 and arrays.images.shape[1:] == (32, 32, 3)
        assert set(np.unique(arrays.labels)) == set(range(10))
    files = sorted(p.name for p in (digits_cache / "data").glob("*.npz"))
    assert files == sorted(f"digits-{digits.VERSION}-{p}-32.npz" for p in [*digits.DOMAINS, "public"])
    assert not list((digits_cache / "data").glob("*.tmp"))


def test_digits_domains_look_different(digits_cache: Path) -> None:
    domains = digits.load_domains(list(digits.DOMAINS), 32, digits_cache)
    for grey in ("mnist", "digits"):
        images = domains[grey].images
        assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    for colour in ("fonts", "mnistm"):
        images = domains[colour].images.astype(np.int16)
        assert np.abs(images[..., 0] - images[..., 1]).mean() > 10
    mean_brightness = {name: arrays.images.mean() for name, arrays in domains.items()}
    assert mean_brightness["mnistm"] > 2 * mean_brightness["mnist"]


def test_public_pool_is_disjoint_from_clients(digits_cache: Path) -> None:
    pool, names = load_public_pool("digits", 32, digits_cache)
    assert names == DIGIT_WORDS
    images, labels = pool.tensors
    assert images.shape == (2000, 3, 32, 32) and labels.dtype == torch.int64
    assert np.bincount(labels.numpy()).tolist() == [200] * 10
    split = digits.mnist_split()
    assert [len(split[p]) for p in ("public", "mnist", "mnistm")] == [2000, 1500, 1500]
    assert not set(split["public"]) & set(split["mnist"])
    assert not set(split["public"]) & set(split["mnistm"])
    assert not set(split["mnist"]) & set(split["mnistm"])
    bench = load_benchmark(DataConfig(domains="mnist,mnistm", num_clients=2), seed=0, cache_dir=digits_cache)
    public_bytes = _image_bytes(images)
    for client in bench.clients:
        for split_ds in (client.train, client.test):
            assert not public_bytes & _image_bytes(split_ds.tensors[0])
    mnist = bench.clients[0]
    assert len(_image_bytes(mnist.train.tensors[0]) | _image_bytes(mnist.test.tensors[0])) > 1400


def test_benchmark_is_deterministic(digits_cache: Path) -> None:
    cfg = DataConfig(max_per_domain=120)
    first, second = (load_benchmark(cfg, seed=3, cache_dir=digits_cache) for _ in range(2))
    other = load_benchmark(cfg, seed=4, cache_dir=digits_cache)
    for a, b, c in zip(first.clients, second.clients, other.clients, strict=True):
        for split in ("train", "test"):
            for x, y in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
                assert torch.equal(x, y)
        assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


def test_unknown_and_empty_digits_domain(digits_cache: Path) -> None:
    with pytest.raises(DataError, match="svhn.*known: mnist, digits, fonts, mnistm"):
        load_benchmark(DataConfig(domains="mnist,svhn", num_clients=2), seed=0, cache_dir=digits_cache)
    with pytest.raises(DataError, match="empty"):
        load_benchmark(DataConfig(domains=" , "), seed=0, cache_dir=digits_cache)


def test_other_image_size(tmp_path: Path) -> None:
    bench = load_benchmark(DataConfig(domains="digits", num_clients=1, image_size=16, max_per_domain=50), 0, tmp_path)
    assert bench.clients[0].train.tensors[0].shape[1:] == (3, 16, 16)
    assert (tmp_path / "data" / f"digits-{digits.VERSION}-digits-16.npz").is_file()


def test_concurrent_builds_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = digits._BUILDERS["digits"]

    def counting(size: int) -> digits.DomainArrays:
        calls.append(size)
        time.sleep(0.2)
        return real(size)

    monkeypatch.setitem(digits._BUILDERS, "digits", counting)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(digits.load_domains(["digits"], 12, tmp_path)["digits"].images))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [12]
    assert len(results) == 3 and all(np.array_equal(results[0], r) for r in results)


def test_save_npz_atomic_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.npz"
    save_npz_atomic(target, a=np.arange(5))
    assert np.load(target)["a"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in target.parent.iterdir()] == ["x.npz"]


# ---------------------------------------------------------------- partitions


def test_dirichlet_partition_skews_labels_and_loses_nothing(digits_cache: Path) -> None:
    cfg = DataConfig(partition="dirichlet", num_clients=5, dirichlet_alpha=0.3, max_per_domain=150)
    bench = load_benchmark(cfg, seed=7, cache_dir=digits_cache)
    assert [c.name for c in bench.clients] == [f"client-{i}" for i in range(5)]
    assert all(c.domain == "mixed" for c in bench.clients)
    assert sum(len(c.train) + len(c.test) for c in bench.clients) == 4 * 150
    totals = sum(np.bincount(_all_labels(c), minlength=10) for c in bench.clients)
    assert totals.tolist() == [60] * 10
    all_images = np.concatenate(
        [_as_uint8(s.tensors[0]) for c in bench.clients for s in (c.train, c.test)]
    ).reshape(600, -1)
    assert len(np.unique(all_images, axis=0)) == 600
    shares = np.stack([np.bincount(_all_labels(c), minlength=10) / len(_all_labels(c)) for c in bench.clients])
    total_variation = 0.5 * np.abs(shares - 0.1).sum(axis=1)
    assert total_variation.mean() > 0.25
    again = load_benchmark(cfg, seed=7, cache_dir=digits_cache)
    for a, b in zip(bench.clients, again.clients, strict=True):
        assert torch.equal(a.train.tensors[1], b.train.tensors[1])


def test_dirichlet_single_domain_names_and_too_many_clients(digits_cache: Path) -> None:
    cfg = DataConfig(domains="fonts", partition="dirichlet", num_clients=3, max_per_domain=90)
    bench = load_benchmark(cfg, seed=0, cache_dir=digits_cache)
    assert [c.name for c in bench.clients] == ["fonts-p0", "fonts-p1", "fonts-p2"]
    assert {c.domain for c in bench.clients} == {"fonts"}
    with pytest.raises(DataError, match="num-clients"):
        load_benchmark(DataConfig(domains="fonts", partition="dirichlet", num_clients=30, max_per_domain=20), 0,
                       digits_cache)


def test_dirichlet_assign_uses_every_index() -> None:
    labels = np.repeat(np.arange(4), 25)
    parts = dirichlet_assign(labels, num_clients=4, alpha=0.5, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert min(len(p) for p in parts) >= 2


def test_stratified_helpers() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [10, 20, 1])
    rest, part = stratified_split(labels, 0.2, rng)
    assert sorted(np.concatenate([rest, part]).tolist()) == list(range(31))
    assert np.bincount(labels[part], minlength=3).tolist() == [2, 4, 0]
    chosen = stratified_subsample(labels, 10, rng)
    assert len(chosen) == 10 and set(labels[chosen]) == {0, 1, 2}
    assert len(set(chosen.tolist())) == 10


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_happy_path(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree")
    cfg = DataConfig(source="imagefolder", path=str(root), num_clients=2, test_fraction=0.4)
    bench = load_benchmark(cfg, seed=0, cache_dir=tmp_path / "cache")
    assert bench.class_names == ["big dog", "cat"]
    assert [c.name for c in bench.clients] == ["photo", "sketch"]
    photo, sketch = bench.clients
    assert len(photo.train) + len(photo.test) == 11 and len(sketch.train) + len(sketch.test) == 10
    assert photo.train.tensors[0].shape[1:] == (3, 32, 32) and photo.train.tensors[0].dtype == torch.float32
    labels = _all_labels(sketch)
    assert np.bincount(labels).tolist() == [5, 5]
    images, labels = sketch.train.tensors
    assert images[labels == 1][:, 1].mean(dim=(1, 2)).min() > 0.7
    only_sketch = load_benchmark(DataConfig(source="imagefolder", path=str(root), domains="sketch", num_clients=1), 0,
                                 tmp_path / "cache")
    assert [c.name for c in only_sketch.clients] == ["sketch"]


def test_imagefolder_cache_tracks_the_listing(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", domains=("a",), per_class=3)
    cfg = DataConfig(source="imagefolder", path=str(root), domains="a", num_clients=1)
    cache = tmp_path / "cache"
    first = load_benchmark(cfg, 0, cache).clients[0]
    assert len(first.train) + len(first.test) == 7
    _write_image(root / "a" / "cat" / "new.png", (1, 2, 3))
    second = load_benchmark(cfg, 0, cache).clients[0]
    assert len(second.train) + len(second.test) == len(first.train) + len(first.test) + 1
    assert len(list((cache / "data").glob("imagefolder-a-*.npz"))) == 2


def test_imagefolder_unknown_domain_lists_available(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree")
    with pytest.raises(DataError, match=r"painting.*photo, sketch"):
        load_benchmark(DataConfig(source="imagefolder", path=str(root), domains="painting", num_clients=1), 0, tmp_path)


def _case_missing_root(root: Path) -> Path:
    return root / "nope"


def _case_no_domains(root: Path) -> Path:
    root.mkdir()
    (root / "readme.txt").write_text("x")
    return root


def _case_domain_without_classes(root: Path) -> Path:
    _write_tree(root)
    (root / "clipart").mkdir()
    return root / "clipart"


def _case_empty_class(root: Path) -> Path:
    _write_tree(root)
    (root / "sketch" / "cow").mkdir()
    (root / "photo" / "cow").mkdir()
    _write_image(root / "photo" / "cow" / "a.png", (1, 1, 1))
    (root / "sketch" / "cow" / "notes.txt").write_text("not an image")
    return root / "sketch" / "cow"


def _case_class_mismatch(root: Path) -> Path:
    _write_tree(root)
    _write_image(root / "sketch" / "horse" / "a.png", (1, 1, 1))
    return root / "sketch"


def _case_corrupt_image(root: Path) -> Path:
    _write_tree(root)
    bad = root / "sketch" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return bad


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_case_missing_root, "does not exist"),
        (_case_no_domains, "no domain folders"),
        (_case_domain_without_classes, "no class folders"),
        (_case_empty_class, "holds no images"),
        (_case_class_mismatch, "extra: horse"),
        (_case_corrupt_image, "cannot be read"),
    ],
)
def test_imagefolder_errors_name_the_path(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "tree"
    offending = make(root)
    path = str(root / "nope") if make is _case_missing_root else str(root)
    cfg = DataConfig(source="imagefolder", path=path, num_clients=2)
    with pytest.raises(DataError) as info:
        load_benchmark(cfg, seed=0, cache_dir=tmp_path / "cache")
    text = str(info.value)
    assert message in text and str(offending) in text and "\n" not in text


def test_imagefolder_on_corrupt_skip_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "tree"
    _case_corrupt_image(root)
    (root / "photo" / "cat" / "empty.png").write_bytes(b"")
    cfg = DataConfig(source="imagefolder", path=str(root), num_clients=2, on_corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="warmfed_flwr.data.imagefolder"):
        bench = load_benchmark(cfg, seed=0, cache_dir=tmp_path / "cache")
    sizes = {c.name: len(c.train) + len(c.test) for c in bench.clients}
    assert sizes == {"photo": 11, "sketch": 10}
    warnings = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 unreadable" in w and "broken.jpg" in w for w in warnings)
    assert any("skipped 1 unreadable" in w and "empty.png" in w for w in warnings)


def test_imagefolder_domains_disagreeing_on_classes_name_both(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", domains=("photo", "sketch", "clipart"))
    for image in (root / "clipart" / "cat").iterdir():
        image.unlink()
    (root / "clipart" / "cat").rmdir()
    _write_image(root / "clipart" / "horse" / "a.png", (1, 1, 1))
    cfg = DataConfig(source="imagefolder", path=str(root), domains="photo,sketch,clipart", num_clients=3)
    with pytest.raises(DataError) as info:
        load_benchmark(cfg, seed=0, cache_dir=tmp_path / "cache")
    text = str(info.value)
    assert f"domain folder {root / 'clipart'} disagrees with {root / 'photo'}" in text
    assert "missing: cat; extra: horse" in text and "\n" not in text


def test_imagefolder_error_counts_the_other_unreadable_files(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _case_corrupt_image(root)
    (root / "sketch" / "big_dog" / "empty.png").write_bytes(b"")
    cfg = DataConfig(source="imagefolder", path=str(root), num_clients=2)
    with pytest.raises(DataError, match=r"cannot be read .*\(1 more unreadable file\(s\) under .*sketch\)"):
        load_benchmark(cfg, seed=0, cache_dir=tmp_path / "cache")


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_tree(tmp_path / "tree", domains=("a",), per_class=3)
    cfg = DataConfig(source="imagefolder", path=str(root), domains="a", num_clients=1)
    first = load_benchmark(cfg, 0, tmp_path / "cache").clients[0]
    [cached] = (tmp_path / "cache" / "data").glob("imagefolder-a-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="warmfed_flwr.data.partition"):
        second = load_benchmark(cfg, 0, tmp_path / "cache").clients[0]
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])
    assert any("ignoring unreadable cache file" in r.getMessage() for r in caplog.records)


def test_public_pool_from_single_domain_folder(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    for c, name in enumerate(["ice_cream", "tree"]):
        for i in range(3):
            _write_image(root / name / f"{i}.png", (100 * c, 50, 50))
    pool, names = load_public_pool(str(root), 24, tmp_path / "cache")
    assert names == ["ice cream", "tree"]
    assert pool.tensors[0].shape == (6, 3, 24, 24)
    assert pool.tensors[1].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        load_public_pool(str(tmp_path / "missing"), 24, tmp_path / "cache")


# ---------------------------------------------------------------- hub


def _hub_dataset(with_domain: bool = True):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(0)
    count = 24
    columns = {
        "img": [Image.fromarray(rng.integers(0, 255, size=(10 + i % 3, 12, 3), dtype=np.uint8)) for i in range(count)],
        "fine_label": [i % 3 for i in range(count)],
    }
    features = {"img": ImageFeature(), "fine_label": ClassLabel(names=["ant", "bee", "wasp"])}
    if with_domain:
        columns["style"] = ["sketch" if i < 10 else "photo" for i in range(count)]
        features["style"] = Value("string")
    return Dataset.from_dict(columns, features=Features(features))


def test_hub_dataset_to_domains() -> None:
    domains, class_names = hub.dataset_to_domains(_hub_dataset(), "img", "fine_label", "style", 16)
    assert class_names == ["ant", "bee", "wasp"]
    assert {name: len(arrays) for name, arrays in domains.items()} == {"photo": 14, "sketch": 10}
    assert domains["sketch"].images.shape == (10, 16, 16, 3) and domains["sketch"].images.dtype == np.uint8
    assert domains["sketch"].labels.tolist() == [i % 3 for i in range(10)]
    single, _ = hub.dataset_to_domains(_hub_dataset(with_domain=False), "img", "fine_label", "", 8)
    assert list(single) == ["hub"] and len(single["hub"]) == 24
    with pytest.raises(DataError, match="no column.*label.*img, fine_label, style"):
        hub.dataset_to_domains(_hub_dataset(), "img", "label", "style", 16)


def test_hub_benchmark_through_load_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _hub_dataset()
    monkeypatch.setattr(hub, "fetch_dataset", lambda hub_id, config="": dataset)
    cfg = DataConfig(source="hub", hub_id="someone/insects", hub_image_column="img", hub_label_column="fine_label",
                     hub_domain_column="style", num_clients=2, image_size=16)
    bench = load_benchmark(cfg, seed=0, cache_dir=tmp_path)
    assert bench.class_names == ["ant", "bee", "wasp"]
    assert [c.name for c in bench.clients] == ["photo", "sketch"]
    assert bench.clients[1].train.tensors[0].shape[1:] == (3, 16, 16)
    again = load_benchmark(cfg, seed=0, cache_dir=tmp_path)
    assert torch.equal(bench.clients[0].train.tensors[0], again.clients[0].train.tensors[0])
    assert len(list((tmp_path / "data").glob("hub-*.npz"))) == 1


def test_hub_failure_is_a_one_line_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = DataConfig(source="hub", hub_id="no-such-org/no-such-dataset-42", num_clients=1)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_benchmark(cfg, seed=0, cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    text = str(info.value)
    assert text.startswith("cannot load hub dataset no-such-org/no-such-dataset-42: ")
    assert text.endswith("check the id or use data.source=imagefolder") and "\n" not in text
    with pytest.raises(DataError, match="hub-id is empty"):
        load_benchmark(DataConfig(source="hub", num_clients=1), seed=0, cache_dir=tmp_path)


# ---------------------------------------------------------------- cache dir


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WARMFED_CACHE", "relative/cache")
    assert default_cache_dir().is_absolute() and default_cache_dir().parts[-2:] == ("relative", "cache")
    monkeypatch.delenv("WARMFED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "warmfed-flwr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "warmfed-flwr"
