"""Benchmark of the generative path on this machine: foundation build, client LoRA steps, batched generation.

Run: python benchmarks/bench_generative.py --steps 300
A fresh temporary cache is used unless --cache-dir is given (then a cached foundation reports its recorded
build time instead of building again).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.data import load_public_pool
from warmfed_flwr.generative.foundation import ensure_foundation
from warmfed_flwr.generative.foundation_spec import FoundationSpec
from warmfed_flwr.generative.lora import adapter_bytes, finetune_lora
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import synthesize

TEMPLATE = "a photo of a {label}"


def time_lora(pipe, pool, names: list[str], batch_size: int, steps: int) -> tuple[float, int]:
    """Seconds per LoRA step (difference of a long and a short run, so setup cost cancels) and adapter bytes."""
    cfg = LoraConfig(steps=1, batch_size=batch_size)
    started = time.perf_counter()
    finetune_lora(pipe, pool, names, TEMPLATE, cfg, seed=0)
    short = time.perf_counter() - started
    started = time.perf_counter()
    state = finetune_lora(pipe, pool, names, TEMPLATE, cfg.model_copy(update={"steps": steps + 1}), seed=0)
    long = time.perf_counter() - started
    return (long - short) / steps, adapter_bytes(state)


def time_generation(pipe, embeddings: torch.Tensor, batch_size: int, images: int, steps: int, guidance: float) -> float:
    """Images per second of ``synthesize`` at ``batch_size`` (after one warm-up batch)."""
    per_class = max(1, images // len(embeddings))
    synthesize(pipe, embeddings[:1], 1, steps, guidance, batch_size=1, seed=99)
    started = time.perf_counter()
    out, _ = synthesize(pipe, embeddings, per_class, steps, guidance, batch_size=batch_size, seed=0)
    return len(out) / (time.perf_counter() - started)


def main() -> None:
    """Build (or reuse) a foundation and print the generative timings and quality figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="foundation UNet + text encoder steps")
    parser.add_argument("--vae-steps", type=int, default=FoundationSpec().vae_steps)
    parser.add_argument("--style-steps", type=int, default=0, help="style-stage steps (the shipped recipe: 4000)")
    parser.add_argument("--source", default="digits")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse this cache (default: a fresh temp dir)")
    parser.add_argument("--lora-steps", type=int, default=20, help="timed LoRA steps at --lora-batch")
    parser.add_argument("--lora-batch", type=int, default=32)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch1-images", type=int, default=10)
    parser.add_argument("--batch64-images", type=int, default=320)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="generator dtypes to time generation in")
    parser.add_argument("--verbose", action="store_true", help="show INFO logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="warmfed-bench-") as scratch:
        cache_dir = args.cache_dir or Path(scratch)
        spec = FoundationSpec(steps=args.steps, vae_steps=args.vae_steps, style_steps=args.style_steps,
                              source=args.source)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
        started = time.perf_counter()
        path = ensure_foundation(spec, cache_dir, TEMPLATE)
        measured = time.perf_counter() - started
        record = json.loads((path / "quality.json").read_text())
        training, quality = record["training"], record["quality"]
        print(f"foundation build ({args.steps} steps, {args.vae_steps} VAE steps, {args.style_steps} style steps): "
              f"{record['build_seconds']:.1f} s "
              f"(this call {measured:.1f} s)")
        print(f"  VAE {training['vae_seconds']:.1f} s, recon MSE {training['vae_mse_first']:.4f} -> "
              f"{training['vae_mse_final']:.4f}")
        print(f"  UNet+text {training['unet_seconds']:.1f} s ({training['unet_seconds'] / args.steps:.3f} s/step), "
              f"loss {training['unet_loss_first']:.4f} -> {training['unet_loss_final']:.4f}")
        print(f"  quality evaluation {quality['quality_seconds']:.1f} s")
        print(f"foundation class fidelity (mean): {100 * quality['class_fidelity_mean']:.1f}%")
        print("  per class: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in quality["class_fidelity"].items()))
        print(f"foundation train-on-synthetic/test-on-real: {100 * quality['train_synthetic_test_real_acc']:.1f}% "
              f"(train-on-real: {100 * quality['train_real_test_real_acc']:.1f}%, "
              f"{quality['synthetic_images']} synthetic images, {quality['real_test_images']} held-out real)")

        pipe = load_pipeline(str(path), torch.device("cpu"))
        pool, names = load_public_pool(args.source, 32, cache_dir)
        step_seconds, size = time_lora(pipe, pool, names, args.lora_batch, args.lora_steps)
        print(f"LoRA step (batch {args.lora_batch}, r=8, attention+conv targets): {step_seconds:.3f} s; "
              f"adapter {size / 1024:.0f} KiB")

        for dtype in args.dtypes.split(","):
            generator = pipe if dtype == "float32" else load_pipeline(str(path), torch.device("cpu"), dtype)
            embeddings = prompt_embeddings(generator, class_prompts(TEMPLATE, names))
            rates = {}
            for batch, count in ((1, args.batch1_images), (64, args.batch64_images)):
                rates[batch] = time_generation(generator, embeddings, batch, count, args.sampling_steps, args.guidance)
                print(f"generation {dtype} batch {batch}: {rates[batch]:.1f} images/s "
                      f"({args.sampling_steps} DDIM steps, guidance {args.guidance})")
            print(f"generation {dtype} batched speed-up per image: {rates[64] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
