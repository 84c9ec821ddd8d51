"""Caches that heal: an unreadable cache entry is removed, rebuilt and equals a clean build; other errors propagate."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.test_client_data import SIZE, _assert_same_split, fake_digits  # noqa: F401 - fake_digits is a fixture
from tests.test_shipped_foundation import TEMPLATE, TINY, fake_pool
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import ClientSplit, ImageArrayDataset, client_cache, load_benchmark, load_client
from warmfed_flwr.data.cache_files import read_or_miss
from warmfed_flwr.generative import foundation
from warmfed_flwr.generative.foundation import cache_problem, ensure_foundation
from warmfed_flwr.generative.foundation_spec import RECORD, file_hashes, sha256_file
from warmfed_flwr.generative.synthesis import cached_synthesis
from warmfed_flwr.methods.round0_upload import client_upload, upload_check
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.wire import protocol

CLASSES = ["zero", "one", "two"]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def damage(path: Path, how: str) -> None:
    """Make the cache file at ``path`` unreadable in one of the ways a crash or a full disk leaves it."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "npy":  # the right name, another format
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3))
    elif how == "foreign arrays":
        with path.open("wb") as handle:
            np.savez(handle, something=np.zeros((2, 2)))
    else:
        raise AssertionError(how)


def warnings_about(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


def config(tiny_pipeline_dir: Path, cache: Path):
    return resolve({"generator.base": str(tiny_pipeline_dir), "lora.enabled": False, "synthesis.images-per-class": 2,
                    "synthesis.steps": 2, "synthesis.batch-size": 6, "synthesis.subset-ratio": 0.5,
                    "cache-dir": str(cache), "device": "cpu"})


def client_split(seed: int = 0) -> ClientSplit:
    generator = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(12, 3, 32, 32, generator=generator), torch.arange(12) % 3
    return ClientSplit("a", "a", TensorDataset(images, labels), TensorDataset(images[:3], labels[:3]))


@pytest.mark.parametrize("how", ["truncated", "empty", "npy", "foreign arrays"])
def test_unreadable_synthetic_set_is_rebuilt_equal_to_a_clean_build(tiny_pipeline_dir: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture, how: str) -> None:
    cfg = config(tiny_pipeline_dir, tmp_path)
    named, _ = client_upload(cfg, client_split(), CLASSES, torch.device("cpu"), tmp_path)
    clean = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path, tmp_path / "run1")
    clean.build_synthetic([("a", named)])
    [cached] = (tmp_path / "synthetic").glob("*.npz")
    damage(cached, how)

    healed = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path, tmp_path / "run2")
    with caplog.at_level(logging.WARNING):
        healed.build_synthetic([("a", named)])
    assert np.array_equal(healed.synthetic.images, clean.synthetic.images)
    assert torch.equal(healed.synthetic.labels, clean.synthetic.labels)
    assert len(warnings_about(cached, caplog)) == 1 and "rebuilding" in warnings_about(cached, caplog)[0]
    with np.load(cached, allow_pickle=False) as stored:
        assert np.array_equal(stored["images"].transpose(0, 2, 3, 1), clean.synthetic.images)
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


def test_a_truncated_synthesis_file_is_made_again(tmp_path: Path) -> None:
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    first = cached_synthesis(tmp_path, "k" * 64, lambda: [(images, labels)])
    damage(tmp_path / f"{'k' * 64}.npz", "truncated")
    again = cached_synthesis(tmp_path, "k" * 64, lambda: [(images, labels)])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(("file", "how"), [("train_images.npy", "empty"), ("test_labels.npy", "truncated"),
                                           ("meta.json", "empty"), ("train_labels.npy", "short")])
def test_unreadable_client_partition_is_rebuilt_equal_to_load_benchmark(
    tmp_path: Path, fake_digits: list[str], caplog: pytest.LogCaptureFixture, file: str, how: str  # noqa: F811
) -> None:
    cfg = DataConfig(image_size=SIZE, partition="dirichlet", num_clients=3)
    _, mapped = load_client(cfg, 0, tmp_path, 1)
    del mapped  # a memory-mapped file must not shrink under a live map
    gc.collect()
    [folder] = (tmp_path / "clients").glob("digits-*/p1")
    if how == "short":
        np.save(folder / file, np.zeros(2, dtype=np.int64))
    else:
        damage(folder / file, how)

    with caplog.at_level(logging.WARNING):
        _, healed = load_client(cfg, 0, tmp_path, 1)
    _assert_same_split(healed, load_benchmark(cfg, 0, tmp_path).clients[1])
    assert len(warnings_about(folder, caplog)) == 1
    assert isinstance(healed.train.images, np.memmap)
    assert np.load(folder / "train_labels.npy").shape == (len(healed.train),)


@pytest.mark.parametrize("how", ["truncated", "npy", "foreign arrays"])
def test_unreadable_decode_cache_is_rebuilt(tmp_path: Path, fake_digits: list[str],  # noqa: F811
                                            caplog: pytest.LogCaptureFixture, how: str) -> None:
    cfg = DataConfig(image_size=SIZE, domains="fonts", num_clients=1)
    first = load_benchmark(cfg, 0, tmp_path).clients[0]
    [cached] = (tmp_path / "data").glob("digits-*-fonts-*.npz")
    damage(cached, how)
    with caplog.at_level(logging.WARNING):
        again = load_benchmark(cfg, 0, tmp_path).clients[0]
    _assert_same_split(again, first)
    assert fake_digits == ["fonts", "fonts"] and len(warnings_about(cached, caplog)) == 1


@pytest.mark.parametrize("how", ["truncated", "empty", "foreign arrays"])
def test_unreadable_upload_cache_is_rebuilt(tiny_pipeline_dir: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture, how: str) -> None:
    cfg = config(tiny_pipeline_dir, tmp_path)
    first, _ = client_upload(cfg, client_split(), CLASSES, torch.device("cpu"), tmp_path)
    [cached] = (tmp_path / "uploads").glob("*.npz")
    damage(cached, how)
    with caplog.at_level(logging.WARNING):
        again, _ = client_upload(cfg, client_split(), CLASSES, torch.device("cpu"), tmp_path)
    assert set(again) == set(first) == {protocol.EMBEDDINGS}
    assert np.array_equal(again[protocol.EMBEDDINGS], first[protocol.EMBEDDINGS])
    assert len(warnings_about(cached, caplog)) == 1
    with np.load(cached, allow_pickle=False) as stored:
        assert np.array_equal(stored[protocol.EMBEDDINGS], first[protocol.EMBEDDINGS])


def test_upload_check_wants_the_embeddings_and_exactly_the_configured_adapter() -> None:
    embeddings = {protocol.EMBEDDINGS: np.zeros((3, 4, 8), dtype=np.float32)}
    adapter = {protocol.ADAPTER_PREFIX + "w": np.zeros(2, dtype=np.float32)}
    upload_check(3, with_adapter=False)(embeddings)
    upload_check(3, with_adapter=True)({**embeddings, **adapter})
    for check, named in [(upload_check(3, True), embeddings), (upload_check(3, False), {**embeddings, **adapter}),
                         (upload_check(2, False), embeddings), (upload_check(3, False), adapter)]:
        with pytest.raises((KeyError, ValueError)):
            check(named)


def test_a_corrupted_custom_foundation_weight_file_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    builds: list[str] = []

    def counting_pool(source: str, image_size: int, cache_dir: Path):
        builds.append(source)
        return fake_pool(source, image_size, cache_dir)

    monkeypatch.setattr(foundation, "load_public_pool", counting_pool)
    path = ensure_foundation(TINY, tmp_path, TEMPLATE)
    recorded = json.loads((path / RECORD).read_text())["files"]
    assert UNET_WEIGHTS in recorded and recorded == file_hashes(path) and cache_problem(path) is None
    weights = path / UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert "does not match its sha256" in cache_problem(path)

    with caplog.at_level(logging.WARNING):
        assert ensure_foundation(TINY, tmp_path, TEMPLATE) == path
    assert len(builds) == 2 and cache_problem(path) is None
    assert sha256_file(weights) == recorded[UNET_WEIGHTS]
    [warning] = warnings_about(path, caplog)
    assert "incomplete" in warning and "rebuilding" in warning and "\n" not in warning
    assert ensure_foundation(TINY, tmp_path, TEMPLATE) == path and len(builds) == 2


def fake_foundation(directory: Path) -> Path:
    """A directory laid out like a cached foundation, with its recorded hashes."""
    (directory / "unet").mkdir(parents=True)
    (directory / "model_index.json").write_text("{}")
    (directory / UNET_WEIGHTS).write_bytes(b"weights")
    (directory / RECORD).write_text(json.dumps({"key": directory.name, "files": file_hashes(directory)}))
    return directory


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: (d / UNET_WEIGHTS).unlink(), "is missing"),
    (lambda d: (d / UNET_WEIGHTS).write_bytes(b""), "does not match its sha256"),
    (lambda d: (d / RECORD).write_text('{"key": "x"}'), "records no sha256"),
    (lambda d: (d / RECORD).write_text('{"ke'), "is unreadable"),
    (lambda d: (d / RECORD).unlink(), "is missing"),
])
def test_cache_problem_names_what_makes_a_foundation_incomplete(tmp_path: Path, change, problem: str) -> None:
    directory = fake_foundation(tmp_path / "f")
    assert cache_problem(directory) is None
    change(directory)
    assert problem in cache_problem(directory)


def test_a_permission_error_on_a_cache_is_not_swallowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    cached_synthesis(tmp_path, "p" * 64, lambda: [(images, labels)])

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(np, "load", denied)
    with pytest.raises(PermissionError):
        cached_synthesis(tmp_path, "p" * 64, lambda: [(images, labels)])
    assert (tmp_path / f"{'p' * 64}.npz").is_file()
    monkeypatch.setattr(foundation, "sha256_file", denied)
    with pytest.raises(PermissionError):
        cache_problem(fake_foundation(tmp_path / "f"))


def test_a_bug_while_reading_a_cache_is_not_swallowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      fake_digits: list[str]) -> None:  # noqa: F811
    cfg = DataConfig(image_size=SIZE, domains="fonts", num_clients=1)
    load_client(cfg, 0, tmp_path, 0)

    def buggy(*args, **kwargs):
        raise TypeError("a bug, not a damaged file")

    monkeypatch.setattr(client_cache, "ImageArrayDataset", buggy)
    with pytest.raises(TypeError, match="a bug"):
        load_client(cfg, 0, tmp_path, 0)
    [folder] = (tmp_path / "clients").glob("digits-*/p0")
    assert (folder / "meta.json").is_file()
    monkeypatch.setattr(client_cache, "ImageArrayDataset", ImageArrayDataset)
    file = tmp_path / "entry"
    file.write_bytes(b"x")
    with pytest.raises(TypeError, match="a bug"):
        read_or_miss(file, buggy)
    assert file.is_file()
