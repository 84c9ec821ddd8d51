"""``warmfed-build-foundation``: build the tiny foundation ahead of a run, print its quality and optionally export it
the way it ships inside the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from warmfed_flwr.data import default_cache_dir
from warmfed_flwr.generative.foundation import ensure_foundation
from warmfed_flwr.generative.foundation_spec import RECORD, FoundationSpec
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE
from warmfed_flwr.generative.shipped import export_foundation


def main(argv: list[str] | None = None) -> None:
    """Console script ``warmfed-build-foundation``: build the tiny foundation ahead of a run and print its quality.

    ``--export DIR`` then copies it (safetensors only) with a ``model_card.json`` into DIR, the way
    ``warmfed_flwr/generative/tiny_foundation`` ships inside the package.
    """
    defaults = FoundationSpec()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="UNet + text encoder training steps")
    parser.add_argument("--style-steps", type=int, default=defaults.style_steps,
                        help="style-stage steps on restyled, style-captioned copies of the pool (0 = none)")
    parser.add_argument("--source", default=defaults.source, help="'digits' or an ImageFolder path")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: the project cache)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template with {label}")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="also export it with a model card into DIR (e.g. warmfed_flwr/generative/tiny_foundation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    spec = dataclasses.replace(defaults, steps=args.steps, style_steps=args.style_steps, source=args.source,
                               image_size=args.image_size, seed=args.seed)
    path = ensure_foundation(spec, args.cache_dir, args.template)
    record = json.loads((path / RECORD).read_text())
    quality = record["quality"]
    print(f"foundation: {path}")
    print(f"build seconds: {record['build_seconds']:.0f}")
    print(f"class fidelity (mean): {100 * quality['class_fidelity_mean']:.1f}%")
    for name, accuracy in quality["class_fidelity"].items():
        print(f"  {name}: {100 * accuracy:.1f}%")
    print(f"train-on-synthetic / test-on-real: {100 * quality['train_synthetic_test_real_acc']:.1f}%")
    print(f"train-on-real / test-on-real: {100 * quality['train_real_test_real_acc']:.1f}%")
    if quality.get("domain_phrase"):
        plain = record["plain_prompt_quality"]
        print(f"(prompts with the pool's style phrase '{quality['domain_phrase']}'; with the plain class prompt: "
              f"class fidelity {100 * plain['class_fidelity_mean']:.1f}%, "
              f"train-on-synthetic {100 * plain['train_synthetic_test_real_acc']:.1f}%)")
    if args.export is not None:
        card = export_foundation(path, args.export)
        print(f"exported: {args.export} ({len(card['files'])} files + model_card.json)")


if __name__ == "__main__":
    main()
