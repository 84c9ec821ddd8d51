"""Generative side of FGL and WarmFed: the foundation generator, client LoRA, prompts and server synthesis.

- ``pipeline``: ``load_pipeline`` (hub id or diffusers directory) and ``resolve_base`` ('tiny' -> shipped or
  cached foundation).
- ``foundation_spec``: the tiny foundation's recipe (``FoundationSpec``), its cache key and build record.
- ``foundation``: its cache (``ensure_foundation``): built once per recipe under a lock, hash-checked on use.
- ``foundation_cli``: ``warmfed-build-foundation``, which builds it ahead of a run and exports it to ship.
- ``tokenizer``, ``tiny_architecture``: its byte-level CLIP tokenizer and its untrained pipeline from configs.
- ``foundation_training``: its pretraining (VAE, then UNet + text encoder).
- ``quality``: ``foundation_quality`` (class fidelity, train-on-synthetic/test-on-real) and ``split_holdout``.
- ``diffusion``: the noise-prediction training step shared by foundation pretraining and client LoRA.
- ``images``: labelled image tensors from a dataset, checked and resized.
- ``shipped``: the prebuilt foundation in ``tiny_foundation/``: export with a model card, locate, verify hashes.
- ``lora``: client LoRA fine-tuning, adapter export and schema, and applying an adapter to the resident pipeline.
- ``prompts``: class prompts and their text embeddings.
- ``synthesis``: batched, seeded generation of a labelled set, its disk cache and preview grids.
"""

from warmfed_flwr.generative.adapters import export_adapter, use_adapter
from warmfed_flwr.generative.foundation import ensure_foundation
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.lora import adapter_bytes, adapter_schema, finetune_lora
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.quality import foundation_quality
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
]
