"""Caches never go stale: a changed generator (UNet, VAE, text encoder, scheduler), sampler setting or adapter is a
cache miss for the synthetic sets, and a changed VAE is one for the round-0 uploads."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from tests.test_cache_healing import CLASSES, client_split, config
from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.generative.lora import adapter_schema
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.synthesis import pipeline_fingerprint
from warmfed_flwr.methods.round0_upload import client_upload
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.wire import protocol

CPU = torch.device("cpu")


def _copy_with_new_vae(source: Path, target: Path) -> Path:
    """The pipeline at ``source`` copied to ``target`` with one VAE weight changed."""
    shutil.copytree(source, target)
    vae = AutoencoderKL.from_pretrained(target / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.01)
    vae.save_pretrained(target / "vae")
    return target


def test_fingerprint_follows_every_component(tiny_pipeline_dir: Path) -> None:
    pipe = load_pipeline(str(tiny_pipeline_dir), CPU, "float32")
    first = pipeline_fingerprint(pipe)
    assert pipeline_fingerprint(load_pipeline(str(tiny_pipeline_dir), CPU, "float32")) == first
    changes = []
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        parameter = next(module.parameters())
        with torch.no_grad():
            parameter.add_(1.0)
            changes.append(pipeline_fingerprint(pipe))
            parameter.sub_(1.0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_end=0.02)
    changes.append(pipeline_fingerprint(pipe))
    assert len({first, *changes}) == 5


def _synthetic_files(cache: Path) -> set[str]:
    return {path.name for path in (cache / "synthetic").glob("*.npz")}


def test_synthesis_cache_misses_on_a_changed_generator_sampler_or_adapter(tiny_pipeline_dir: Path,
                                                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = config(tiny_pipeline_dir, cache)
    named, _ = client_upload(cfg, client_split(), CLASSES, CPU, cache)
    seen: set[str] = set()

    def synthesize(run_cfg, upload) -> None:
        SyntheticWarmStart(run_cfg, CLASSES, CPU, cache, tmp_path / "out").synthesize_client("a", upload, seed=0)
        files = _synthetic_files(cache)
        assert len(files) == len(seen) + 1, "expected a cache miss"
        seen.update(files)

    synthesize(cfg, named)
    SyntheticWarmStart(cfg, CLASSES, CPU, cache, tmp_path / "out").synthesize_client("a", named, seed=0)
    assert _synthetic_files(cache) == seen, "the same inputs must hit the cache"
    synthesize(cfg.model_copy(update={"synthesis": cfg.synthesis.model_copy(update={"timestep_spacing": "trailing"})}),
               named)
    synthesize(cfg.model_copy(update={"synthesis": cfg.synthesis.model_copy(update={"batch_size": 5})}), named)
    other = _copy_with_new_vae(tiny_pipeline_dir, tmp_path / "other-vae")
    synthesize(cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"base": str(other)})}), named)
    synthesize(cfg, {**named, protocol.EMBEDDINGS: named[protocol.EMBEDDINGS] * 1.01})
    generator = torch.Generator().manual_seed(0)
    schema = adapter_schema(load_pipeline(str(tiny_pipeline_dir), CPU, "float32"), LoraConfig(rank=2))
    adapter = {protocol.ADAPTER_PREFIX + key: (0.01 * torch.randn(shape, generator=generator)).numpy()
               for key, (shape, _) in schema.items()}
    synthesize(cfg, {**named, **adapter})
    first = next(iter(adapter))
    synthesize(cfg, {**named, **adapter, first: adapter[first] * 2.0})


def test_upload_cache_misses_on_a_changed_vae(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = config(tiny_pipeline_dir, cache)
    client_upload(cfg, client_split(), CLASSES, CPU, cache)
    client_upload(cfg, client_split(), CLASSES, CPU, cache)
    assert len(list((cache / "uploads").glob("*.npz"))) == 1
    other = _copy_with_new_vae(tiny_pipeline_dir, tmp_path / "other-vae")
    moved = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"base": str(other)})})
    client_upload(moved, client_split(), CLASSES, CPU, cache)
    assert len(list((cache / "uploads").glob("*.npz"))) == 2
