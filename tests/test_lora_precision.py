"""Client LoRA steps on an SD-shaped pipeline loaded in half precision: fp32 adapter, loss-scaled fp16 gradients."""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import DDPMScheduler
from torch.utils.data import TensorDataset

from tests.sd_shaped import build_sd_shaped_pipeline
from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.generative import lora
from warmfed_flwr.generative.diffusion import TrainingLatents, noise_prediction_loss
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings

NAMES = ["square", "bar"]
TEMPLATE = "a photo of a {label}"
CFG = LoraConfig(rank=4, alpha=4.0, steps=2, batch_size=4)


@functools.cache
def _pipe(dtype: torch.dtype, image_size: int = 64):
    """The SD-shaped pipeline with its weights rounded to fp16 (so every precision sees the same base), in ``dtype``.

    Shared between tests: every test leaves it as it found it (``lora_training`` removes its adapter).
    """
    return build_sd_shaped_pipeline(image_size=image_size).to(torch.float16).to(dtype)


def _latents(image_size: int, count: int = 8) -> TrainingLatents:
    """Posterior stats of ``count`` images at the pipeline's latent size, as ``TrainingLatents.encode`` keeps them."""
    generator = torch.Generator().manual_seed(0)
    side = image_size // 8
    mean = torch.randn((count, 4, side, side), generator=generator)
    return TrainingLatents(mean, torch.full_like(mean, 0.1), torch.arange(count) % len(NAMES), 1.0)


def _one_step(pipe, data: TrainingLatents, scaled: bool = True) -> tuple[dict[str, torch.Tensor], lora.LoraStep]:
    """LoRA gradients of one training step (``step(loss)``, or a bare ``loss.backward()`` when not ``scaled``)."""
    unet = pipe.unet
    embeddings = prompt_embeddings(pipe, class_prompts(TEMPLATE, NAMES) + [""]).to(unet.device, unet.dtype)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with lora.lora_training(unet, CFG, seed=0) as step:
        loss = noise_prediction_loss(unet, scheduler, data, embeddings, CFG.batch_size, lora.UNCOND_PROB,
                                     torch.Generator().manual_seed(1), step.dtype)
        if scaled:
            step(loss)
        else:
            loss.backward()
        assert all(p.dtype == torch.float32 for p in step.params)
        grads = {name: p.grad.detach().clone() for name, p in unet.named_parameters() if p.requires_grad}
    assert not any(pipe.get_list_adapters().values())
    return grads, step


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def test_fp16_step_scales_the_loss_and_matches_fp32() -> None:
    data = _latents(64)
    reference, fp32_step = _one_step(_pipe(torch.float32), data)
    grads, step = _one_step(_pipe(torch.float16), data)
    assert fp32_step.scaler is None and fp32_step.dtype == torch.float32
    assert step.dtype == torch.float16 and step.scaler is not None
    assert step.scaler.get_scale() > 1.0
    flat, ref = _flat(grads), _flat(reference)
    assert grads.keys() == reference.keys() and all(g.dtype == torch.float32 for g in grads.values())
    assert bool(torch.isfinite(flat).all()) and bool((flat != 0).any())
    assert ((flat - ref).norm() / ref.norm()).item() < 1e-2


def test_fp16_gradients_underflow_without_the_scaler() -> None:
    """At a 16 x 16 latent a fifth of the LoRA gradient entries lie below fp16's smallest normal (2**-14): a bare fp16
    backward (the old step) keeps them as subnormals with few bits, the scaled step keeps their precision."""
    data = _latents(128)
    ref = _flat(_one_step(_pipe(torch.float32, 128), data)[0])
    half = _pipe(torch.float16, 128)
    bare = _flat(_one_step(half, data, scaled=False)[0])
    scaled = _flat(_one_step(half, data)[0])
    small = (ref != 0) & (ref.abs() < 2.0**-14)
    assert int(small.sum()) > 0.1 * int((ref != 0).sum())

    def error(grads: torch.Tensor) -> float:
        return ((grads - ref).abs() / ref.abs())[small].median().item()

    assert error(scaled) < 0.02
    assert error(bare) > 3 * error(scaled)
    assert ((scaled - ref).norm() / ref.norm()).item() < 1e-2


def test_bf16_step_has_no_scaler_and_nonzero_gradients() -> None:
    data = _latents(64)
    reference, _ = _one_step(_pipe(torch.float32), data)
    grads, step = _one_step(_pipe(torch.bfloat16), data)
    assert step.dtype == torch.bfloat16 and step.scaler is None
    flat, ref = _flat(grads), _flat(reference)
    assert bool(torch.isfinite(flat).all()) and bool((flat != 0).any())
    assert ((flat - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finetune_lora_in_half_precision_exports_fp32(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fp16 step scales its loss (by more than 1), no bf16 step does; the adapter is fp32 either way."""
    scales: list[float] = []
    scale = torch.amp.GradScaler.scale

    def recording_scale(self, outputs):
        scales.append(self.get_scale())
        return scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", recording_scale)
    pipe = _pipe(dtype)
    before = {key: value.clone() for key, value in pipe.unet.state_dict().items()}
    images = torch.rand((6, 3, 48, 48), generator=torch.Generator().manual_seed(0))
    state = lora.finetune_lora(pipe, TensorDataset(images, torch.arange(6) % 2), NAMES, TEMPLATE, CFG, seed=0)
    assert state and all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in state.values())
    assert any(bool((v != 0).any()) for key, v in state.items() if ".lora_B." in key)
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], v) for k, v in after.items())
    assert pipe.unet.dtype == dtype
    if dtype == torch.float16:
        assert len(scales) == CFG.steps and min(scales) > 1.0
    else:
        assert not scales
