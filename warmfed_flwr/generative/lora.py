"""Client LoRA on the generator's UNet: fine-tune it and describe its tensors (schema); applying and exporting an
adapter is generative/adapters.py.

Round-0 uploads are checked against :func:`adapter_schema` (prefixed, with the prompt embeddings) by
``payload.validate`` in the server strategy, before an adapter reaches ``adapters.use_adapter``.

Adapters travel as tensor dicts in the PEFT key format that diffusers saves and loads for every model
(``unet.<module>.lora_A.weight`` / ``.lora_B.weight``, what ``StableDiffusionPipeline.save_lora_weights`` writes
for ``get_peft_model_state_dict(unet)``). ``convert_state_dict_to_diffusers`` is deliberately not applied: it
renames only attention keys (``lora.down``/``lora.up``), and diffusers 0.42 then skips its PEFT conversion for a
dict whose first key is a conv ``lora_A`` key, silently dropping every attention adapter on load.
The LoRA scale alpha/rank is folded into the ``lora_B`` tensors on export, so an adapter carries no alpha
metadata and loads with the same effect in any diffusers pipeline (which assumes alpha = rank when none is given).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict
from torch.utils.data import Dataset, Subset

from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.diffusion import TrainingLatents, noise_prediction_loss
from warmfed_flwr.generative.images import training_batches
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.records.progress import progress_bar

logger = logging.getLogger(__name__)

PREFIX = "unet."
TRAIN_ADAPTER = "warmfed_train"
PROBE_ADAPTER = "warmfed_schema_probe"
UNCOND_PROB = 0.1
"""Share of training samples conditioned on the empty prompt, so guided sampling stays consistent after LoRA."""

Schema = dict[str, tuple[tuple[int, ...], str]]


def add_lora(unet: UNet2DConditionModel, cfg: LoraConfig, adapter_name: str = "default") -> None:
    """Inject a peft LoRA adapter (rank, alpha, targets of ``cfg``; B initialised to zero) into ``unet``."""
    targets = cfg.target_list()
    if not targets:
        raise GeneratorError("config key 'lora.targets' is empty; list UNet module names such as to_q,to_k,to_v")
    config = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=targets)
    try:
        unet.add_adapter(config, adapter_name=adapter_name)
    except ValueError as exc:
        raise GeneratorError(
            f"config key 'lora.targets' = '{cfg.targets}' cannot be applied to the UNet ({exc}); "
            "use module names such as to_q,to_k,to_v,to_out.0,conv1,conv2"
        ) from exc


def _remove_unet_adapter(unet: UNet2DConditionModel, adapter_name: str) -> None:
    """Delete one adapter; when none is left, strip the peft wrappers so the UNet is its plain self again."""
    unet.delete_adapters(adapter_name)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()


def _adapter_state(unet: UNet2DConditionModel, adapter_name: str, cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """The adapter as fp32 CPU tensors keyed 'unet.<module>.lora_A/B.weight', with alpha/rank folded into B."""
    scale = cfg.alpha / cfg.rank
    state = {}
    for key, value in get_peft_model_state_dict(unet, adapter_name=adapter_name).items():
        tensor = value.detach().float().cpu().clone()
        if ".lora_B." in key:
            tensor.mul_(scale)
        state[PREFIX + key] = tensor.contiguous()
    return state


class LoraStep:
    """One AdamW step on fp32 LoRA parameters, in the precision of the frozen base weights (``base_dtype``).

    float16: the loss is computed under fp16 autocast (``dtype``) and scaled by a ``torch.amp.GradScaler`` before
    the backward pass, so small gradients do not underflow in fp16; the scaler unscales the gradients before the
    optimiser step (clip, if ever added, after ``scaler.unscale_``), skips a step whose gradients hold Inf/NaN and
    lowers the scale. bfloat16: bf16 autocast, no scaling (its range is fp32's). Anything else: plain fp32.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float, base_dtype: torch.dtype) -> None:
        self.params = params
        self.dtype = base_dtype if base_dtype in (torch.float16, torch.bfloat16) else torch.float32
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.scaler = torch.amp.GradScaler(params[0].device.type) if self.dtype == torch.float16 else None

    def __call__(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss`` (computed under autocast in ``self.dtype``), step, and return its value."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.item()


@contextmanager
def lora_training(unet: UNet2DConditionModel, cfg: LoraConfig, seed: int,
                  extra: list[torch.nn.Parameter] | None = None) -> Iterator[LoraStep]:
    """A fresh LoRA (seeded, fp32 parameters) on the frozen ``unet`` in train mode, with its ``LoraStep`` (which
    also steps the ``extra`` parameters).

    On exit the adapter is removed and every base weight's requires_grad flag and the train/eval mode are restored.
    """
    base_dtype = unet.dtype
    grad_flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    was_training = unet.training
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(unet, cfg, TRAIN_ADAPTER)
    try:
        cast_training_params(unet, torch.float32)
        step = LoraStep([p for p in unet.parameters() if p.requires_grad] + list(extra or []), cfg.lr, base_dtype)
        unet.train()
        yield step
    finally:
        _remove_unet_adapter(unet, TRAIN_ADAPTER)
        for name, param in unet.named_parameters():
            param.requires_grad_(grad_flags.get(name, False))
        unet.train(was_training)


def lora_images(dataset: Dataset, cfg: LoraConfig, seed: int) -> Dataset:
    """The images LoRA encodes: all of them, or a seeded random ``lora.steps x lora.batch-size`` of them when the set
    is larger (no run draws more samples than that), so the latent stats kept on the device stay bounded."""
    cap = cfg.steps * cfg.batch_size
    if len(dataset) <= cap:  # type: ignore[arg-type]
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    return Subset(dataset, order[:cap].sort().values.tolist())


def finetune_lora(
    pipe: StableDiffusionPipeline,
    dataset: Dataset,
    class_names: list[str],
    template: str,
    cfg: LoraConfig,
    seed: int,
    domain_phrase: str = "",
) -> dict[str, torch.Tensor]:
    """The adapter of :func:`fit_adapter` (its class embeddings dropped)."""
    return fit_adapter(pipe, dataset, class_names, template, cfg, seed, domain_phrase)[0]


def fit_adapter(
    pipe: StableDiffusionPipeline,
    dataset: Dataset,
    class_names: list[str],
    template: str,
    cfg: LoraConfig,
    seed: int,
    domain_phrase: str = "",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fine-tune a fresh LoRA on the UNet with the noise-prediction loss on ``dataset``; the adapter and the class
    prompt embeddings [C, seq, dim] (fp32, CPU) to synthesize with.

    Prompts are ``class_prompts(template, class_names, domain_phrase)`` by label, with 10% empty prompts. With
    ``lora.train-embeddings`` the class prompts' text-encoder outputs are trained with the adapter (textual-inversion
    style; the empty prompt's stay fixed), else they are the frozen encoder's. ``lora.snr-gamma`` > 0 weights the
    loss by min-SNR. The text encoder, the VAE and every base weight stay frozen, and the adapter is removed from
    the pipeline afterwards, which leaves the pipeline exactly as it was. The training images are read, resized to
    the generator's native size and VAE-encoded batch by batch (``training_batches``); only their latent stats are
    kept. The step runs in the UNet's precision (``LoraStep``).
    """
    unet, device = pipe.unet, pipe.device
    started = time.perf_counter()
    size = unet.config.sample_size * pipe.vae_scale_factor
    dataset = lora_images(dataset, cfg, seed)
    batches = training_batches(dataset, class_names, size, "LoRA")
    data = TrainingLatents.encode_batches(pipe.vae, batches, len(dataset))  # type: ignore[arg-type]
    frozen = prompt_embeddings(pipe, class_prompts(template, class_names, domain_phrase) + [""])
    classes = torch.nn.Parameter(frozen[:-1].clone().to(device), requires_grad=cfg.train_embeddings)
    empty = frozen[-1:].to(device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with lora_training(unet, cfg, seed, [classes] if cfg.train_embeddings else []) as step:
        bar = progress_bar(range(cfg.steps), desc="client LoRA", unit="step")
        for _ in bar:
            states = torch.cat([classes, empty]).to(unet.dtype)
            loss = noise_prediction_loss(
                unet, noise_scheduler, data, states, cfg.batch_size, UNCOND_PROB, generator, step.dtype,
                snr_gamma=cfg.snr_gamma,
            )
            losses.append(step(loss))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        state = _adapter_state(unet, TRAIN_ADAPTER, cfg)
    window = max(1, min(50, len(losses) // 5))
    logger.info(
        "LoRA r=%d on %d images: %d steps in %.1f s, loss %.4f -> %.4f, %d tensors, %.1f KiB%s",
        cfg.rank, len(data.labels), cfg.steps, time.perf_counter() - started,
        sum(losses[:window]) / window, sum(losses[-window:]) / window, len(state), adapter_bytes(state) / 1024,
        ", embeddings trained" if cfg.train_embeddings else "",
    )
    return state, classes.detach().float().cpu()


def adapter_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Payload size of an adapter: the sum of its tensors' bytes."""
    return sum(t.numel() * t.element_size() for t in state.values())


def adapter_schema(pipe: StableDiffusionPipeline, cfg: LoraConfig) -> Schema:
    """Expected adapter keys -> (shape, dtype name) for ``cfg``'s rank and targets on this pipeline's UNet."""
    return unet_adapter_schema(pipe.unet, cfg)


def unet_adapter_schema(unet: UNet2DConditionModel, cfg: LoraConfig) -> Schema:
    """:func:`adapter_schema` of a bare UNet, read from shapes alone, so a UNet on the 'meta' device works too.

    Every entry is float32, the dtype :func:`finetune_lora` exports.
    """
    with torch.random.fork_rng(devices=[]):
        add_lora(unet, cfg, PROBE_ADAPTER)
    try:
        state = get_peft_model_state_dict(unet, adapter_name=PROBE_ADAPTER)
    finally:
        _remove_unet_adapter(unet, PROBE_ADAPTER)
    return {PREFIX + key: (tuple(value.shape), "float32") for key, value in state.items()}
