"""A client adapter on a resident pipeline: fused for sampling and removed with the base weights restored bit for bit,
exported in diffusers format; diffusers' per-load warning kept to once per process."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative.lora import PREFIX


def export_adapter(state: Mapping[str, torch.Tensor], directory: Path) -> Path:
    """Write the adapter with ``save_lora_weights`` so ``pipe.load_lora_weights(directory)`` loads it anywhere."""
    unet_layers = {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)}
    if len(unet_layers) != len(state):
        stray = next(key for key in state if not key.startswith(PREFIX))
        raise GeneratorError(f"adapter key '{stray}' lacks the '{PREFIX}' prefix; export adapters from finetune_lora")
    StableDiffusionPipeline.save_lora_weights(Path(directory), unet_lora_layers=unet_layers, safe_serialization=True)
    return Path(directory) / "pytorch_lora_weights.safetensors"


class OncePerProcess(logging.Filter):
    """Lets each distinct message through once in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """True the first time ``record``'s message is seen."""
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


LOADER_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft")
"""diffusers warns 'No LoRA keys associated to CLIPTextModel found' here for every UNet-only adapter it loads."""
_ONCE = OncePerProcess()


@contextmanager
def use_adapter(pipe: StableDiffusionPipeline, state: Mapping[str, torch.Tensor], name: str) -> Iterator[None]:
    """Load ``state`` into the resident pipeline as adapter ``name`` and fuse it into the UNet's weights for the
    block (sampling then costs what the base costs: on the tiny foundation an unfused adapter's extra matmuls made
    synthesis ~30 % slower); then unfuse and delete it, and put back the base weights it was fused into, bit for bit
    (unfusing alone subtracts in floating point), without reloading the pipeline.
    """
    for logger_name in LOADER_LOGGERS:
        logging.getLogger(logger_name).addFilter(_ONCE)
    try:
        pipe.load_lora_weights(dict(state), adapter_name=name)
        loaded = {PREFIX + key for key in get_peft_model_state_dict(pipe.unet, adapter_name=name)}
        dropped = sorted(set(state) - loaded)
        if dropped:
            raise ValueError(f"{len(dropped)} of {len(state)} tensors were not loaded, e.g. '{dropped[0]}'")
    except (ValueError, KeyError, RuntimeError) as exc:
        if any(name in names for names in pipe.get_list_adapters().values()):
            _remove_pipeline_adapter(pipe, name)
        text = str(exc).strip()
        raise GeneratorError(
            f"cannot apply LoRA adapter '{name}': {text.splitlines()[0] if text else repr(exc)}; "
            "check it with payload.validate against this pipeline's adapter_schema, as round-0 uploads are"
        ) from exc
    base = [(layer, layer.weight.detach().clone()) for layer in _adapted_base_layers(pipe.unet)]
    try:
        pipe.fuse_lora(components=["unet"], adapter_names=[name])
        yield
    finally:
        pipe.unfuse_lora(components=["unet"])
        _remove_pipeline_adapter(pipe, name)
        with torch.no_grad():
            for layer, weight in base:
                layer.weight.copy_(weight)


def _adapted_base_layers(unet: UNet2DConditionModel) -> list[torch.nn.Module]:
    """The base layers that peft LoRA wrappers hold in ``unet`` (the ones fusing changes)."""
    return [module.get_base_layer() for module in unet.modules() if isinstance(module, BaseTunerLayer)]


def _remove_pipeline_adapter(pipe: StableDiffusionPipeline, name: str) -> None:
    pipe.delete_adapters(name)
    if not any(pipe.get_list_adapters().values()):
        pipe.unload_lora_weights()
