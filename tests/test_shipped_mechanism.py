"""The mechanism on the real shipped foundation: the default config loads it (hash-checked, no build), and what it
draws, with and without a small trained adapter, teaches a classifier the real classes far above chance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import LoraConfig, ModelConfig
from warmfed_flwr.data import load_benchmark
from warmfed_flwr.data.digits import CLASS_NAMES
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative import foundation, shipped
from warmfed_flwr.generative.adapters import use_adapter
from warmfed_flwr.generative.images import as_float_image
from warmfed_flwr.generative.lora import fit_adapter
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import synthesize
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import evaluate, train_epochs

CPU = torch.device("cpu")
PER_CLASS = 20
CHANCE = 0.1


def _no_build(*args, **kwargs) -> None:
    raise AssertionError("the default config built a foundation instead of loading the shipped one")


@pytest.fixture(scope="module")
def shipped_pipe(tmp_path_factory: pytest.TempPathFactory):
    """The default config's generator: the shipped foundation, hash-verified, never built."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(foundation, "_build_into", _no_build)
        patch.setattr(shipped, "_verified", set())
        base = resolve_base(resolve({}).generator, tmp_path_factory.mktemp("empty-cache"))
    assert Path(base).resolve() in {c.resolve() for c in shipped.candidates()}
    return load_pipeline(base, CPU, "float32")


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = resolve({})
    benchmark = load_benchmark(cfg.data, 0, tmp_path_factory.mktemp("digits-cache"))
    return {client.domain: client for client in benchmark.clients}


def test_a_changed_shipped_weight_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(shipped.SHIPPED_DIR, tmp_path / "tiny_foundation"))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy)
    monkeypatch.setattr(shipped, "installed_distribution", lambda: None)
    monkeypatch.setattr(shipped, "_verified", set())
    monkeypatch.setattr(foundation, "_build_into", _no_build)
    with pytest.raises(GeneratorError, match="does not match its sha256"):
        resolve_base(resolve({}).generator, tmp_path / "cache")


def _accuracy_on_real(images: torch.Tensor, labels: torch.Tensor, real: TensorDataset) -> float:
    """A classifier trained on the synthetic images, tested on real ones."""
    model = seeded_model(ModelConfig(), 10, 0)
    train_epochs(model, TensorDataset(images, labels), epochs=8, lr=0.01, batch_size=32, device=CPU, seed=0)
    return evaluate(model, real, CPU)[1]


def _real_test(client) -> TensorDataset:
    images, labels = client.test.tensors
    return TensorDataset(as_float_image(images), labels)


def test_the_foundation_alone_draws_learnable_classes(shipped_pipe, clients: dict) -> None:
    prompts = class_prompts("a photo of a {label}", CLASS_NAMES)
    images, labels = synthesize(shipped_pipe, prompt_embeddings(shipped_pipe, prompts), PER_CLASS, 10, 3.0, 64, seed=0)
    assert _accuracy_on_real(images, labels, _real_test(clients["mnist"])) > 5 * CHANCE


def test_a_small_adapter_keeps_the_class(shipped_pipe, clients: dict) -> None:
    client = clients["mnist"]
    cfg = LoraConfig(steps=40)
    adapter, embeddings = fit_adapter(shipped_pipe, client.train, CLASS_NAMES, "a photo of a {label}", cfg, seed=0,
                                      domain_phrase=client.domain)
    with use_adapter(shipped_pipe, adapter, client.domain):
        images, labels = synthesize(shipped_pipe, embeddings, PER_CLASS, 10, 3.0, 64, seed=0)
    assert _accuracy_on_real(images, labels, _real_test(client)) > 5 * CHANCE


def test_style_words_steer_the_shipped_foundation(shipped_pipe) -> None:
    """Its style stage taught the text to steer style: 'black on white' draws light images, 'white on black' dark
    (0.48 against 0.15 mean brightness; the class stage alone drew both at 0.13)."""
    brightness = {}
    for phrase in ("white on black", "black on white"):
        embeddings = prompt_embeddings(shipped_pipe, class_prompts("a photo of a {label}", CLASS_NAMES, phrase))
        images, _ = synthesize(shipped_pipe, embeddings, 2, 10, 3.0, 64, seed=0)
        brightness[phrase] = float(images.mean())
    assert brightness["black on white"] > brightness["white on black"] + 0.2, brightness
