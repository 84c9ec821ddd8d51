"""Generative package tests on an untrained tiny pipeline built offline from configs (no hub access)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from warmfed_flwr.config.schema import GeneratorConfig, LoraConfig
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative import foundation, lora, pipeline
from warmfed_flwr.generative.adapters import export_adapter, use_adapter
from warmfed_flwr.generative.foundation import ensure_foundation
from warmfed_flwr.generative.foundation_spec import FoundationSpec, foundation_key
from warmfed_flwr.generative.foundation_training import pretrain_foundation
from warmfed_flwr.generative.lora import adapter_schema, add_lora, finetune_lora
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import (
    GRID_MAX_CLASSES,
    cached_synthesis,
    quantize,
    save_grid,
    synthesis_key,
    synthesize,
)
from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline
from warmfed_flwr.generative.tokenizer import MAX_TOKENS, VOCABULARY, build_tokenizer

CPU = torch.device("cpu")
NAMES = ["zero", "one", "two"]
TEMPLATE = "a photo of a {label}"
SMALL_LORA = LoraConfig(rank=4, alpha=8.0, steps=3, batch_size=8)


def shapes_dataset(per_class: int = 8, size: int = 32, seed: int = 0) -> TensorDataset:
    """Three easy classes: a bright square, a bright bar and an empty frame, with noise."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((3 * per_class, 3, size, size), generator=generator) * 0.1
    labels = torch.arange(3).repeat_interleave(per_class)
    q = size // 4
    images[labels == 0, :, q:3 * q, q:3 * q] += 0.8
    images[labels == 1, :, :, 2 * q - 2:2 * q + 2] += 0.8
    images[labels == 2, :, :2] += 0.8
    images[labels == 2, :, -2:] += 0.8
    return TensorDataset(images.clamp(0.0, 1.0), labels)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any hub access fail fast, as on the offline CI machines."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny pipeline saved in diffusers format once per session."""
    directory = tmp_path_factory.mktemp("tiny") / "pipeline"
    build_tiny_pipeline(seed=0).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def pipe(tiny_dir: Path):
    """The saved tiny pipeline loaded through the hub-or-path loader."""
    return load_pipeline(str(tiny_dir), CPU)


@pytest.fixture(scope="session")
def embeddings(pipe) -> torch.Tensor:
    return prompt_embeddings(pipe, class_prompts(TEMPLATE, NAMES))


def generate(pipe, embeddings: torch.Tensor, seed: int = 7) -> torch.Tensor:
    return synthesize(pipe, embeddings, images_per_class=2, steps=2, guidance=3.0, batch_size=4, seed=seed)[0]


def test_saved_pipeline_loads_and_generates(pipe, embeddings: torch.Tensor) -> None:
    images, labels = synthesize(pipe, embeddings, images_per_class=3, steps=2, guidance=3.0, batch_size=4, seed=1)
    assert images.shape == (9, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == [3, 3, 3]
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler"


def test_synthesize_is_deterministic_per_seed(pipe, embeddings: torch.Tensor) -> None:
    first, second = generate(pipe, embeddings, seed=3), generate(pipe, embeddings, seed=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, generate(pipe, embeddings, seed=4))
    resized, _ = synthesize(pipe, embeddings, 1, 2, 1.0, 3, 0, size=16)
    assert resized.shape == (3, 3, 16, 16)


def test_synthesize_rejects_foreign_embeddings(pipe) -> None:
    with pytest.raises(GeneratorError, match="same generator"):
        synthesize(pipe, torch.zeros(2, 7, 5), 1, 2, 3.0, 2, 0)


def test_resolve_base_passes_non_tiny_through(tmp_path: Path) -> None:
    assert resolve_base(GeneratorConfig(base="stable-diffusion-v1-5/stable-diffusion-v1-5"), tmp_path) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    assert resolve_base(GeneratorConfig(base="/models/my-sd"), tmp_path) == "/models/my-sd"
    assert not (tmp_path / "foundation").exists()


def test_resolve_base_tiny_uses_foundation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = {}

    def fake(spec: FoundationSpec, cache_dir: Path, template: str) -> Path:
        seen.update(spec=spec, cache_dir=cache_dir, template=template)
        return cache_dir / "foundation" / "abc"

    monkeypatch.setattr(pipeline, "ensure_foundation", fake)
    cfg = GeneratorConfig(foundation_steps=123, foundation_source="/data/pool", prompt_template="an image of {label}")
    assert resolve_base(cfg, tmp_path) == str(tmp_path / "foundation" / "abc")
    assert seen["spec"].steps == 123 and seen["spec"].source == "/data/pool"
    assert seen["template"] == "an image of {label}"


def test_load_pipeline_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pipeline"
    with pytest.raises(GeneratorError, match="no-such-pipeline") as info:
        load_pipeline(str(missing), CPU)
    assert "\n" not in str(info.value) and "hub id" in str(info.value)


def test_load_pipeline_offline_hub_id_fails_cleanly() -> None:
    with pytest.raises(GeneratorError, match="no-such-org/no-such-model"):
        load_pipeline("no-such-org/no-such-model", CPU)


def test_tokenizer_words_and_round_trip(pipe) -> None:
    built = build_tokenizer()
    for word in ["zero", "seven", "photo", "handwritten"]:
        assert len(built(word).input_ids) == 3, word
    assert all(len(built(word).input_ids) == 3 for word in VOCABULARY)
    text = "A photo of a Zürich-xylophone, 7!"
    ids = built(text).input_ids
    assert pipe.tokenizer(text).input_ids == ids
    assert built.unk_token_id not in ids[1:-1]
    assert pipe.tokenizer.model_max_length == MAX_TOKENS


def test_prompts_and_embeddings(pipe) -> None:
    prompts = class_prompts(TEMPLATE, NAMES, domain_phrase="handwritten")
    assert prompts[1] == "a photo of a one, handwritten"
    emb = prompt_embeddings(pipe, prompts)
    assert emb.shape == (3, MAX_TOKENS, 32) and emb.dtype == torch.float32 and emb.device == CPU
    with pytest.raises(GeneratorError, match="placeholder"):
        class_prompts("a photo of a {class}", NAMES)


def test_adapter_round_trip_and_base_restored(pipe, embeddings: torch.Tensor, tmp_path: Path) -> None:
    before = generate(pipe, embeddings)
    weights = {key: value.clone() for key, value in pipe.unet.state_dict().items()}
    state = finetune_lora(pipe, shapes_dataset(), NAMES, TEMPLATE, SMALL_LORA, seed=0)
    assert all(v.dtype == torch.float32 and v.device == CPU for v in state.values())
    assert all(key.startswith("unet.") for key in state)
    assert any(".attn2.to_k." in key for key in state) and any(".conv1." in key for key in state)
    after_training = pipe.unet.state_dict()
    assert after_training.keys() == weights.keys()
    assert all(torch.equal(weights[key], value) for key, value in after_training.items())

    transferred = {key: torch.from_numpy(np.array(value.numpy())) for key, value in state.items()}
    with use_adapter(pipe, state, "client-a"):
        adapted = generate(pipe, embeddings)
    with use_adapter(pipe, transferred, "client-b"):
        adapted_again = generate(pipe, embeddings)
    assert torch.equal(adapted, adapted_again)
    assert not torch.equal(adapted, before)
    assert torch.equal(generate(pipe, embeddings), before)
    assert not any(pipe.get_list_adapters().values())

    export_adapter(state, tmp_path / "adapter")
    pipe.load_lora_weights(str(tmp_path / "adapter"), adapter_name="from-file")
    try:  # unfused here, fused in use_adapter: the same images up to float rounding
        torch.testing.assert_close(generate(pipe, embeddings), adapted, rtol=0, atol=1e-4)
    finally:
        pipe.unload_lora_weights()
    assert torch.equal(generate(pipe, embeddings), before)


def test_exported_adapter_keeps_alpha_scale(pipe) -> None:
    cfg = LoraConfig(rank=2, alpha=8.0, targets="to_q,to_v,conv2")
    unet = pipe.unet
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, MAX_TOKENS, 32, generator=torch.Generator().manual_seed(1))
    add_lora(unet, cfg, "scaled")
    try:
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
            expected = unet(sample, 10, encoder_hidden_states=context).sample
        state = lora._adapter_state(unet, "scaled", cfg)
    finally:
        lora._remove_unet_adapter(unet, "scaled")
    with use_adapter(pipe, state, "reloaded"), torch.no_grad():
        loaded = unet(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)


def test_use_adapter_rejects_foreign_tensors(pipe, embeddings: torch.Tensor) -> None:
    before = generate(pipe, embeddings)
    bogus = {"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 32), "unet.no_such_block.to_q.lora_B.weight":
             torch.zeros(32, 4)}
    with pytest.raises(GeneratorError, match="adapter 'bad'"), use_adapter(pipe, bogus, "bad"):
        pass
    assert torch.equal(generate(pipe, embeddings), before)


def test_a_fusing_failure_leaves_the_base_pipeline(pipe, embeddings: torch.Tensor, monkeypatch) -> None:
    cfg = LoraConfig(rank=2, alpha=4.0, targets="to_q,to_v,conv2")
    add_lora(pipe.unet, cfg, "random")
    try:
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
        state = lora._adapter_state(pipe.unet, "random", cfg)
    finally:
        lora._remove_unet_adapter(pipe.unet, "random")
    before = generate(pipe, embeddings)
    fuse = pipe.fuse_lora

    def fuse_then_fail(**kwargs) -> None:
        fuse(**kwargs)
        raise RuntimeError("out of memory while fusing")

    monkeypatch.setattr(pipe, "fuse_lora", fuse_then_fail)
    with pytest.raises(RuntimeError, match="while fusing"), use_adapter(pipe, state, "half-fused"):
        pass
    assert not any(pipe.get_list_adapters().values())
    assert torch.equal(generate(pipe, embeddings), before)


def test_adapter_schema_matches_finetune(pipe) -> None:
    schema = adapter_schema(pipe, SMALL_LORA)
    one_step = SMALL_LORA.model_copy(update={"steps": 1})
    state = finetune_lora(pipe, shapes_dataset(per_class=3), NAMES, TEMPLATE, one_step, seed=1)
    assert list(schema) == list(state)
    assert all(schema[key] == (tuple(value.shape), "float32") for key, value in state.items())
    assert not any(pipe.get_list_adapters().values())


def test_cached_synthesis_reuses_file(tmp_path: Path) -> None:
    calls = []

    floats = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def make():
        calls.append(1)
        yield floats[:4], torch.arange(4) % 3
        yield floats[4:], torch.arange(4, 6) % 3

    key = synthesis_key(torch.ones(2, 3), {"steps": 10, "guidance": 3.0}, SMALL_LORA, "tiny")
    images, labels = cached_synthesis(tmp_path, key, make)
    again_images, again_labels = cached_synthesis(tmp_path, key, make)
    assert len(calls) == 1
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    assert labels.dtype == np.int64 and images.dtype == np.uint8 and images.shape == (6, 8, 8, 3)
    assert np.array_equal(images, quantize(floats).transpose(0, 2, 3, 1))
    with np.load(tmp_path / f"{key}.npz", allow_pickle=False) as stored:
        assert stored["images"].dtype == np.uint8 and stored["images"].shape == (6, 3, 8, 8)
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npz"]


def test_synthesis_key_tracks_inputs() -> None:
    base = synthesis_key(torch.ones(3), {"a": 1, "b": 2.0}, "x")
    assert base == synthesis_key(torch.ones(3), {"b": 2.0, "a": 1}, "x")
    assert base != synthesis_key(torch.ones(3) * 2, {"a": 1, "b": 2.0}, "x")
    assert base != synthesis_key(torch.ones(3, dtype=torch.float64), {"a": 1, "b": 2.0}, "x")
    assert base != synthesis_key(torch.ones(3), {"a": 1, "b": 2.5}, "x")
    with pytest.raises(GeneratorError, match="file-safe"):
        cached_synthesis(Path("/tmp"), "../escape", lambda: [(torch.zeros(1), torch.zeros(1))])


def test_save_grid_has_one_row_per_class(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    path = tmp_path / "grids" / "grid.png"
    save_grid(images, labels, path, per_class=4)
    width, height = Image.open(path).size
    assert (width, height) == (4 * 9 + 1, 3 * 9 + 1)


def test_save_grid_caps_its_rows(tmp_path: Path) -> None:
    """A 345-class set draws GRID_MAX_CLASSES rows, not 345."""
    images = np.zeros((345, 4, 4, 3), dtype=np.uint8)
    save_grid(images, np.arange(345), tmp_path / "grid.png", per_class=2)
    assert Image.open(tmp_path / "grid.png").size[1] == GRID_MAX_CLASSES * 5 + 1


def _tiny_spec(**changes) -> FoundationSpec:
    spec = FoundationSpec(steps=25, vae_steps=25, batch_size=16, warmup_steps=5, quality_images_per_class=4,
                          quality_steps=2, holdout_fraction=0.25, style_steps=0)
    return dataclasses.replace(spec, **changes)


def test_pretrain_foundation_reduces_losses() -> None:
    tiny = build_tiny_pipeline(seed=1)
    stats = pretrain_foundation(tiny, shapes_dataset(per_class=16), NAMES, _tiny_spec(steps=40), TEMPLATE, CPU)
    assert stats["vae_mse_final"] < stats["vae_mse_first"]
    assert stats["unet_loss_final"] < stats["unet_loss_first"]
    assert tiny.vae.config.scaling_factor == pytest.approx(stats["vae_scaling_factor"])
    assert not any(p.requires_grad for p in tiny.unet.parameters())


def test_ensure_foundation_builds_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loads = []

    def fake_pool(source: str, image_size: int, cache_dir: Path) -> tuple[TensorDataset, list[str]]:
        loads.append(source)
        return shapes_dataset(per_class=8, size=image_size), list(NAMES)

    monkeypatch.setattr(foundation, "load_public_pool", fake_pool)
    spec = _tiny_spec()
    results: list[Path] = []
    workers = [threading.Thread(target=lambda: results.append(ensure_foundation(spec, tmp_path, TEMPLATE)))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(loads) == 1 and len(results) == 2 and results[0] == results[1]
    path = results[0]
    assert path == tmp_path / "foundation" / foundation_key(spec, TEMPLATE)
    record = json.loads((path / "quality.json").read_text())
    assert set(record["quality"]["class_fidelity"]) == set(NAMES)
    assert record["training"]["unet_loss_final"] < record["training"]["unet_loss_first"]
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert ensure_foundation(spec, tmp_path, TEMPLATE) == path
    assert len(loads) == 1 and (path / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "foundation").iterdir() if p.name.startswith(".")]
    loaded = load_pipeline(str(path), CPU)
    assert loaded.vae.config.scaling_factor == pytest.approx(record["training"]["vae_scaling_factor"])
    assert foundation_key(spec, TEMPLATE) != foundation_key(spec, "an image of {label}")
