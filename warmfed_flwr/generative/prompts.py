"""Class prompts and their text embeddings (what FGL and WarmFed clients upload instead of images)."""

from __future__ import annotations

import logging

import torch
from diffusers import StableDiffusionPipeline

from warmfed_flwr.config.schema import GeneratorConfig
from warmfed_flwr.errors import GeneratorError

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = GeneratorConfig().prompt_template
"""The default config's prompt template, the one the tiny foundation's text encoder learns."""


def class_prompts(template: str, class_names: list[str], domain_phrase: str = "") -> list[str]:
    """One prompt per class: ``template`` with ``{label}`` filled, then ", <domain_phrase>" when one is given."""
    suffix = f", {domain_phrase.strip()}" if domain_phrase.strip() else ""
    try:
        return [template.format(label=name) + suffix for name in class_names]
    except (KeyError, IndexError, ValueError) as exc:
        raise GeneratorError(
            f"prompt template {template!r} cannot be filled ({exc!r}); use '{{label}}' as its only placeholder"
        ) from exc


def prompt_tokens(pipe: StableDiffusionPipeline, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Token ids [len(prompts), max_length] of ``prompts``, padded and truncated as the pipeline encodes them."""
    return pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def prompt_embeddings(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder outputs [len(prompts), max_length, dim] in fp32 on the CPU, as the pipeline encodes prompts."""
    embeddings, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return embeddings.float().cpu()
