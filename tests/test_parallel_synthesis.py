"""`synthesis.devices`: one pipeline per listed device, clients' synthetic sets made in parallel threads."""

import threading
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.methods import synthetic_set
from warmfed_flwr.methods.round0_upload import client_upload
from warmfed_flwr.methods.warmstart import SyntheticWarmStart

CLASSES = ["zero", "one", "two"]
CLIENTS = ["a", "b", "c"]


def config(tiny_pipeline_dir, cache, **overrides):
    return resolve({"generator.base": str(tiny_pipeline_dir), "lora.steps": 2, "lora.batch-size": 8,
                    "synthesis.images-per-class": 2, "synthesis.steps": 2, "synthesis.batch-size": 4,
                    "synthesis.subset-ratio": 0.5, "cache-dir": str(cache), "device": "cpu", **overrides})


def split(name: str, seed: int) -> ClientSplit:
    generator = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(12, 3, 32, 32, generator=generator), torch.arange(12) % 3
    return ClientSplit(name, name, TensorDataset(images, labels), TensorDataset(images[:3], labels[:3]))


@pytest.fixture(scope="module")
def uploads(tiny_pipeline_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("uploads")
    cfg = config(tiny_pipeline_dir, cache)
    return [(name, client_upload(cfg, split(name, i), CLASSES, torch.device("cpu"), cache)[0])
            for i, name in enumerate(CLIENTS)]


def test_two_cpu_pipelines_make_exactly_the_sequential_images_in_parallel(tiny_pipeline_dir, tmp_path, uploads,
                                                                          monkeypatch):
    sequential = SyntheticWarmStart(config(tiny_pipeline_dir, tmp_path / "c1"), CLASSES, torch.device("cpu"),
                                    tmp_path / "c1", tmp_path / "r1").build_synthetic(uploads)

    cfg = config(tiny_pipeline_dir, tmp_path / "c2", **{"synthesis.devices": "cpu, cpu"})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "c2", tmp_path / "r2")
    calls: list[tuple[int, str]] = []
    busy: dict[int, int] = {}
    first_two = threading.Barrier(2, timeout=60)  # broken (an error) unless two syntheses run at the same time
    lock = threading.Lock()
    original = synthetic_set.synthesize_batches

    def recording(pipe, *args, **kwargs):
        with lock:
            calls.append((id(pipe), threading.current_thread().name))
            busy[id(pipe)] = busy.get(id(pipe), 0) + 1
            assert busy[id(pipe)] == 1, "one client per device at a time"
            waits = len(calls) <= 2
        if waits:
            first_two.wait()
        try:
            yield from original(pipe, *args, **kwargs)
        finally:
            with lock:
                busy[id(pipe)] -= 1

    monkeypatch.setattr(synthetic_set, "synthesize_batches", recording)
    parallel = warm_start.build_synthetic(uploads)

    assert len(calls) == len(CLIENTS)
    assert len({pipe for pipe, _ in calls}) == 2 and len({thread for _, thread in calls}) == 2
    assert np.array_equal(parallel.images, sequential.images) and torch.equal(parallel.labels, sequential.labels)
    assert parallel.sources == sequential.sources

    pipes = [weakref.ref(warm_start.generator()), *(weakref.ref(p) for p in warm_start.extra_pipes)]
    assert len(pipes) == 2 and all(ref() is not None for ref in pipes)
    warm_start.release_generator()
    assert all(ref() is None for ref in pipes), "release_generator must free every pipeline"


def test_the_default_keeps_one_pipeline_on_the_run_device(tiny_pipeline_dir, tmp_path):
    warm_start = SyntheticWarmStart(config(tiny_pipeline_dir, tmp_path), CLASSES, torch.device("cpu"), tmp_path,
                                    tmp_path / "run")
    assert warm_start.synthesis_devices == [torch.device("cpu")]
    assert warm_start.generator().device == torch.device("cpu")
    assert resolve({"synthesis.devices": " cuda:0 ,cuda:1,cpu"}).synthesis.device_list() == ["cuda:0", "cuda:1", "cpu"]


def test_bad_synthesis_devices_are_refused_with_one_line():
    with pytest.raises(ConfigError, match="synthesis.devices.*'gpu1'"):
        resolve({"synthesis.devices": "cuda:0,gpu1"})
