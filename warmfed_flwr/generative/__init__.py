"""Generative side of FGL and WarmFed: the foundation generator, client LoRA, prompts and server synthesis.

- ``pipeline``: ``load_pipeline`` (hub id or diffusers directory) and ``resolve_base`` ('tiny' -> cached foundation).
- ``foundation``: the embedded tiny StableDiffusionPipeline, its CPU pretraining, quality figures and cache.
- ``lora``: client LoRA fine-tuning, adapter export/validation, and applying an adapter to the resident pipeline.
- ``prompts``: class prompts and their text embeddings.
- ``synthesis``: batched, seeded generation of a labelled set, its disk cache and preview grids.
"""

from warmfed_flwr.generative.foundation import FoundationSpec, ensure_foundation, foundation_quality
from warmfed_flwr.generative.lora import (
    adapter_bytes,
    adapter_schema,
    export_adapter,
    finetune_lora,
    use_adapter,
    validate_adapter,
)
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import cached_synthesis, save_grid, synthesis_key, synthesize

__all__ = [
    "FoundationSpec",
    "adapter_bytes",
    "adapter_schema",
    "cached_synthesis",
    "class_prompts",
    "ensure_foundation",
    "export_adapter",
    "finetune_lora",
    "foundation_quality",
    "load_pipeline",
    "prompt_embeddings",
    "resolve_base",
    "save_grid",
    "synthesis_key",
    "synthesize",
    "use_adapter",
    "validate_adapter",
]
