"""warmfed-build-random-sd: the shipped SD architectures with seeded random weights, written as float16 and loaded
through load_pipeline (the real layouts on 'meta', a CPU-sized narrowing of SD 2.1-base on disk)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors import safe_open

from tests.sd_shaped import narrow_sd_configs
from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.generative import random_sd
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.prompts import prompt_embeddings
from warmfed_flwr.plan.generator import architecture


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("arch", "counts"), [("sd15", (859_520_964, 83_653_863, 123_060_480)),
                                               ("sd21base", (865_910_724, 83_653_863, 340_387_840))])
def test_builder_uses_the_shipped_architecture_at_any_sample_size(arch, counts):
    shipped = [json.loads((random_sd.SD_CONFIGS / arch / f"{part}.json").read_text())
               for part in ("unet", "vae", "text_encoder")]
    configs = random_sd.sd_configs(arch, sample_size=8)
    assert configs.unet == {**shipped[0], "sample_size": 8}
    assert configs.vae == {**shipped[1], "sample_size": 64}
    assert configs.text_encoder == shipped[2]
    with torch.device("meta"):
        pipe = random_sd.build_random_pipeline(configs)
    assert (_count(pipe.unet), _count(pipe.vae), _count(pipe.text_encoder)) == counts
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert random_sd.sd_configs(arch).unet["sample_size"] == 64


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="sd15, sd21base"):
        random_sd.sd_configs("sdxl")


def test_the_seed_decides_the_weights():
    first, again, other = (random_sd.build_random_pipeline(narrow_sd_configs(), seed) for seed in (0, 0, 1))
    for part in ("unet", "vae", "text_encoder"):
        states = [getattr(pipe, part).state_dict() for pipe in (first, again, other)]
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), part
        assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0]), part


def test_written_pipeline_is_float16_and_loads_through_load_pipeline(tmp_path):
    configs = narrow_sd_configs(sample_size=4)
    built = random_sd.build_random_pipeline(configs, seed=3)
    reference = {k: v.clone() for k, v in built.unet.state_dict().items()}
    out = random_sd.save_random_pipeline(built, tmp_path / "random", {"arch": "narrow", "seed": 3})
    for weights in out.rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as file:
            assert {file.get_tensor(k).dtype for k in file.keys()} == {torch.float16}, weights
    assert random_sd.random_card(out) == {"arch": "narrow", "seed": 3}
    assert "timing" in (out / "README.md").read_text()

    pipe = load_pipeline(str(out), torch.device("cpu"), "auto")
    assert pipe.unet.dtype == torch.float32
    assert all(torch.equal(v, reference[k].half().float()) for k, v in pipe.unet.state_dict().items())
    assert {k: pipe.unet.config[k] for k in configs.unet if not k.startswith("_")} == {
        k: v for k, v in configs.unet.items() if not k.startswith("_")}
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert {k: pipe.scheduler.config[k] for k in random_sd.SD_SCHEDULER} == random_sd.SD_SCHEDULER

    ids = pipe.tokenizer(["a photo of a backpack, art_painting", "qzxv unheard-of words"], padding="max_length",
                         return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert int(ids.max()) < pipe.text_encoder.config.vocab_size
    assert [pipe.tokenizer.decode(row, skip_special_tokens=True).replace(" ", "") for row in ids] == [
        "aphotoofabackpack,art_painting", "qzxvunheard-ofwords"]
    embeddings = prompt_embeddings(pipe, ["a photo of a dog"])
    assert embeddings.shape == (1, 77, 64) and torch.isfinite(embeddings).all()

    arch = architecture(str(out), LoraConfig(enabled=False), activations=False)
    assert (arch.unet_parameters, arch.vae_parameters, arch.text_parameters) == (
        _count(pipe.unet), _count(pipe.vae), _count(pipe.text_encoder))
    assert (arch.image_size, arch.tokens, arch.text_dim) == (32, 77, 64)


def test_command_line_writes_the_pipeline_with_its_card(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(random_sd, "sd_configs", lambda arch, sample_size=None: narrow_sd_configs(sample_size or 8))
    random_sd.main(["--arch", "sd21base", "--out", str(tmp_path / "rsd"), "--seed", "5", "--sample-size", "4"])
    assert random_sd.random_card(tmp_path / "rsd") == {"arch": "sd21base", "seed": 5, "sample_size": 4}
    assert json.loads((tmp_path / "rsd" / "unet" / "config.json").read_text())["sample_size"] == 4
    assert "timing only" in capsys.readouterr().out
