"""The comparison suites and their plan: which variant runs with which run config, seed and directory."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.errors import ConfigError

DESCRIPTIVE_PHRASES = ("mnist=white on black;digits=white on black, thick, blurry;fonts=on a gradient;"
                       "mnistm=textured on a photo")
"""FGL's descriptive prompts: each digits domain described in the style words the foundation learned, written from
looking at a few of its images (as FGL's authors wrote per-domain style prompts), never tuned on any score."""
NO_SYNTHETIC_FINETUNING = {"warmfed.client-syn-finetune": False, "warmfed.server-finetune": False}
SUITES: dict[str, dict[str, dict[str, Any]]] = {
    "global": {
        "WarmFed": {"algorithm": "warmfed"},
        "FGL": {"algorithm": "fgl"},
        "FGL (descriptive prompts)": {"algorithm": "fgl", "generator.domain-phrases": DESCRIPTIVE_PHRASES},
        "FedAvg (5 rounds)": {"algorithm": "fedavg"},
        "FedAvg (25 rounds)": {"algorithm": "fedavg", "train.rounds": 25},
        "Warm start + FedAvg": {"algorithm": "warmfed", **NO_SYNTHETIC_FINETUNING},
        "Centralized": {"algorithm": "centralized"},
    },
    "ablation": {
        "WarmFed": {"algorithm": "warmfed"},
        "without server synthetic FT": {"algorithm": "warmfed", "warmfed.server-finetune": False},
        "without client synthetic FT": {"algorithm": "warmfed", "warmfed.client-syn-finetune": False},
        "Warm start + FedAvg": {"algorithm": "warmfed", **NO_SYNTHETIC_FINETUNING},
        "synthetic lr x1 (the paper read literally)": {"algorithm": "warmfed", "warmfed.syn-lr-scale": 1.0},
        "subset ratio 0.5": {"algorithm": "warmfed", "synthesis.subset-ratio": 0.5},
        "15 synthetic images per class": {"algorithm": "warmfed", "synthesis.images-per-class": 15},
    },
    "personal": {
        "WarmFed + DSD": {"algorithm": "warmfed", "personalization.method": "dsd"},
        "WarmFed + pFedSD": {"algorithm": "warmfed", "personalization.method": "pfedsd"},
        "WarmFed + Ditto": {"algorithm": "warmfed", "personalization.method": "ditto"},
        "WarmFed + FedBN": {"algorithm": "warmfed", "personalization.method": "fedbn"},
        "FedAvg + fine-tuning": {"algorithm": "fedavg", "personalization.method": "finetune"},
        "Local only": {"algorithm": "local"},
    },
    "privacy": {
        "WarmFed (no DP)": {"algorithm": "warmfed"},
        **{f"WarmFed, DP noise {sigma:g}": {"algorithm": "warmfed", "privacy.noise-multiplier": sigma}
           for sigma in (0.001, 0.002, 0.005, 0.01, 0.1)},
    },
}
SUITE_TITLES = {"global": "Global model", "ablation": "WarmFed ablation", "personal": "Personalized models",
                "privacy": "Privacy: audit and local differential privacy"}
"""The heading of each suite's report."""
RESERVED = ("seed", "output-dir", "run-name")
"""Keys the script sets per run: use --seeds and --output-dir instead of --set."""


@dataclass
class RunPlan:
    """One variant x seed: its run config, resolved config, directory and the notes about its overrides."""

    variant: str
    seed: int
    run_config: dict[str, Any]
    cfg: ExperimentConfig
    run_dir: Path
    notes: list[str] = field(default_factory=list)


def slug(name: str) -> str:
    """A directory-safe name: 'FedAvg (5 rounds)' -> 'fedavg-5-rounds'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_value(text: str) -> Any:
    """A TOML scalar (int, float, bool, quoted string); anything else is kept as a plain string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` pairs as overrides; raises ValueError on a malformed or reserved one."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key in RESERVED:
            raise ValueError(f"--set {key}: set by the script per run; use --seeds / --output-dir")
        overrides[key] = parse_value(value.strip())
    return overrides


def select_variants(suite: str, only: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """The suite's variants, limited to ``only`` (in suite order); raises ValueError on an unknown name."""
    variants = SUITES[suite]
    if not only:
        return dict(variants)
    unknown = [name for name in only if name not in variants]
    if unknown:
        raise ValueError(f"--only {unknown}: not in suite {suite!r}; known: {list(variants)}")
    return {name: spec for name, spec in variants.items() if name in only}


def shadowed(overrides: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[str]:
    """One line per --set key that a variant overrides with its own value."""
    return [f"{name}: keeps {key}={spec[key]!r} (--set {key}={overrides[key]!r} ignored)"
            for name, spec in variants.items() for key in spec if key in overrides and overrides[key] != spec[key]]


def plan_runs(variants: dict[str, dict[str, Any]], seeds: list[int], overrides: dict[str, Any],
              run_root: Path, cache_dir: str) -> list[RunPlan]:
    """Every variant x seed with its run config, validated locally; raises ConfigError naming the variant."""
    plans = []
    for name, spec in variants.items():
        notes = shadowed(overrides, {name: spec})
        for seed in seeds:
            run_config = {"device": "auto", **({"cache-dir": cache_dir} if cache_dir else {}), **overrides, **spec,
                          "output-dir": str(run_root), "run-name": f"{slug(name)}-s{seed}", "seed": seed}
            try:
                cfg = resolve(run_config)
            except ConfigError as exc:
                raise ConfigError(f"variant {name!r}: {exc}") from None
            plans.append(RunPlan(name, seed, run_config, cfg, run_root / run_config["run-name"], notes))
    return plans
