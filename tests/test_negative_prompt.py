"""synthesis.negative-prompt: the negative embedding of classifier-free guidance, and part of the cache key."""

from __future__ import annotations

import numpy as np
import torch

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import synthesis_key, synthesize
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.wire import protocol

CPU = torch.device("cpu")
CLASSES = ["zero", "one", "two"]
NEGATIVE = "low quality, low resolution"


def sample(pipe, embeddings, **kwargs) -> torch.Tensor:
    return synthesize(pipe, embeddings, images_per_class=1, steps=2, guidance=2.0, batch_size=3, seed=5,
                      **kwargs)[0]


def test_negative_prompt_changes_images_and_default_is_the_empty_prompt(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir), CPU)
    embeddings = prompt_embeddings(pipe, class_prompts("a photo of a {label}", CLASSES))
    default = sample(pipe, embeddings)
    assert torch.equal(default, sample(pipe, embeddings, negative_prompt=""))
    assert not torch.equal(default, sample(pipe, embeddings, negative_prompt=NEGATIVE))


def test_server_synthesis_uses_negative_prompt_and_keys_it(tiny_pipeline_dir, tmp_path):
    flat = {"generator.base": str(tiny_pipeline_dir), "synthesis.images-per-class": 1, "synthesis.steps": 2,
            "synthesis.batch-size": 3, "device": "cpu", "cache-dir": str(tmp_path / "cache")}
    plain = SyntheticWarmStart(resolve(flat), CLASSES, CPU, tmp_path / "cache", tmp_path / "run")
    negative = SyntheticWarmStart(resolve({**flat, "synthesis.negative-prompt": NEGATIVE}), CLASSES, CPU,
                                  tmp_path / "cache", tmp_path / "run")
    embeddings = prompt_embeddings(plain.generator(), class_prompts("a photo of a {label}", CLASSES))
    upload = {protocol.EMBEDDINGS: embeddings.numpy()}
    plain_images = plain.synthesize_client("a", upload, seed=0)[0]
    negative_images = negative.synthesize_client("a", upload, seed=0)[0]
    assert plain.synthesis_keys["a"] != negative.synthesis_keys["a"]
    assert not np.array_equal(plain_images, negative_images)
    syn, size = plain.cfg.synthesis, plain.cfg.data.image_size
    assert plain.synthesis_keys["a"] == synthesis_key(embeddings, {}, plain.generator_hash, syn.images_per_class,
                                                      syn.steps, syn.guidance, 0, size, "", syn.timestep_spacing,
                                                      syn.batch_size)
