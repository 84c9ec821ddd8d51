"""Why do WarmFed's globalization rounds help or hurt? Rounds 1..R replayed in-process on validation data.

Round 0 (client LoRA, server synthesis, one-shot training) runs once per seed through the same core functions the
Flower apps call; then every variant replays rounds 1..R (FedAvg weighted by examples, client and server synthetic
fine-tuning as configured) from the same warm start. Each client's private train split is cut 80/20 into a
fit part and a validation part: everything trains on the fit part and the table reports validation accuracy, so
the defaults chosen from it never see the test splits that results/*.md report.

    python -m benchmarks.diagnose_globalization --seeds 0 --out results/diagnose_globalization.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import ClientSplit, default_cache_dir, load_benchmark
from warmfed_flwr.data.partition import stratified_split
from warmfed_flwr.learning.training import evaluate, get_weights, resolve_device, seed_everything, set_weights
from warmfed_flwr.methods.round0_upload import client_upload, default_domain_phrase
from warmfed_flwr.methods.warmstart import SyntheticWarmStart, globalize_client
from warmfed_flwr.wire.protocol import EMBEDDINGS

VARIANTS: dict[str, dict[str, Any]] = {
    "warm start + FedAvg (no synthetic fine-tuning)": {"client_syn_finetune": False, "server_finetune": False},
    "WarmFed as in the paper (labels, BN statistics updated)": {"syn_lr_scale": 1.0},
    "server FT only": {"client_syn_finetune": False, "syn_lr_scale": 1.0},
    "client FT only": {"server_finetune": False, "syn_lr_scale": 1.0},
    "BN statistics frozen during synthetic FT": {"syn_bn_stats": "frozen", "syn_lr_scale": 1.0},
    "synthetic lr x0.1": {"syn_lr_scale": 0.1},
    "client pass mixes private and synthetic": {"client_syn_mode": "mixed", "syn_lr_scale": 1.0},
    "server FT distills the clients' ensemble": {"server_ft_target": "ensemble", "syn_lr_scale": 1.0},
    "ensemble distillation, client FT off": {"server_ft_target": "ensemble", "client_syn_finetune": False,
                                              "syn_lr_scale": 1.0},
}


def validation_splits(cfg: ExperimentConfig, cache_dir: Path) -> tuple[list[str], list[ClientSplit]]:
    """The benchmark's clients with their train split cut into fit (train) and validation (test) parts."""
    benchmark = load_benchmark(cfg.data, cfg.seed, cache_dir)
    clients = []
    for index, client in enumerate(benchmark.clients):
        images, labels = client.train.tensors
        fit, val = stratified_split(labels.numpy(), 0.2, np.random.default_rng([cfg.seed, index, 7]))
        clients.append(ClientSplit(client.name, client.domain, TensorDataset(images[fit], labels[fit]),
                                   TensorDataset(images[val], labels[val])))
    return benchmark.class_names, clients


def replay(warm_start: SyntheticWarmStart, warm: list, clients: list[ClientSplit], cfg: ExperimentConfig,
           device: torch.device) -> list[float]:
    """Pooled validation accuracy after the warm start and after every round 1..R of ``cfg``."""
    warm_start.cfg = cfg
    model = copy.deepcopy(warm_start.model)
    set_weights(model, warm)
    history = [pooled_accuracy(model, clients, device)]
    weights = warm
    for algo_round in range(1, cfg.train.rounds + 1):
        uploads = []
        for index, client in enumerate(clients):
            set_weights(model, weights)
            globalize_client(model, warm_start.subset, client, cfg, device, cfg.seed * 1000 + index + algo_round)
            uploads.append(([w.copy() for w in get_weights(model)], len(client.train)))
        total = sum(n for _, n in uploads)
        averaged = [sum(w[i] * (n / total) for w, n in uploads) for i in range(len(uploads[0][0]))]
        weights = [w.copy() for w in warm_start.finetune(averaged, algo_round, [w for w, _ in uploads])]
        set_weights(model, weights)
        history.append(pooled_accuracy(model, clients, device))
    return history


def pooled_accuracy(model: torch.nn.Module, clients: list[ClientSplit], device: torch.device) -> float:
    """Accuracy over every client's validation part, pooled."""
    correct = total = 0
    for client in clients:
        _, accuracy = evaluate(model, client.test, device)
        correct += accuracy * len(client.test)
        total += len(client.test)
    return correct / total


def run_seed(seed: int, overrides: dict[str, Any], cache_dir: Path) -> dict[str, list[float]]:
    """Round 0 once, then every variant's rounds, for one seed."""
    cfg = resolve({**overrides, "seed": seed})
    seed_everything(seed)
    device = resolve_device(cfg.device)
    class_names, clients = validation_splits(cfg, cache_dir)
    uploads = []
    for client in clients:
        phrase = default_domain_phrase(cfg.generator, client.domain)
        named, _ = client_upload(cfg, client, class_names, device, cache_dir, phrase)
        uploads.append((client.name, named))
    validation = {client.name: client.test for client in clients}
    prompts_only = [(name, {EMBEDDINGS: named[EMBEDDINGS]}) for name, named in uploads]
    fgl = SyntheticWarmStart(cfg, class_names, device, cache_dir, Path(f"/tmp/diagnose_globalization/fgl-s{seed}"))
    fgl.build_synthetic(prompts_only)
    warm_start = SyntheticWarmStart(cfg, class_names, device, cache_dir,
                                    Path(f"/tmp/diagnose_globalization/warmfed-s{seed}"))
    warm_start.build_synthetic(uploads)
    for label, source in (("FGL (base, prompts only)", fgl), ("WarmFed (adapters)", warm_start)):
        quality = source.synthetic_quality(validation)
        print(f"seed {seed} synthetic quality, {label}: "
              + ", ".join(f"{name} {100 * value:.1f}" for name, value in quality.items()), flush=True)
    warm = [w.copy() for w in warm_start.train_warm_start()]
    results = {}
    for name, change in VARIANTS.items():
        started = time.perf_counter()
        variant = cfg.model_copy(update={"warmfed": cfg.warmfed.model_copy(update=change)})
        results[name] = replay(warm_start, warm, clients, variant, device)
        print(f"seed {seed} {name}: " + " ".join(f"{100 * a:.1f}" for a in results[name])
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def parse_args(doc: str) -> argparse.Namespace:
    """--seeds, --set KEY=VALUE overrides and --out, for this script and the diagnostics that replay its rounds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The --set overrides as config values."""
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.sets)}


def write_table(args: argparse.Namespace, module: str, title: str, description: str, row_header: str,
                per_seed: list[dict[str, list[float]]]) -> None:
    """The per-round table (mean ± std over seeds) with the command that made it, to ``args.out`` and stdout."""
    rounds = len(next(iter(per_seed[0].values())))
    lines = [
        f"# {title}", "",
        f"Command: `python -m {module} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --set {' '.join(args.sets)}" if args.sets else "") + f" --out {args.out}`", "",
        description, "",
        f"| {row_header} | " + " | ".join(f"r{r}" for r in range(rounds)) + " |",
        "|---|" + "---|" * rounds,
    ]
    for name in per_seed[0]:
        cells = []
        for r in range(rounds):
            values = [100 * result[name][r] for result in per_seed]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Run the seeds and write the markdown table."""
    args = parse_args(__doc__)
    per_seed = [run_seed(seed, overrides_of(args), default_cache_dir()) for seed in args.seeds]
    write_table(args, "benchmarks.diagnose_globalization", "Globalization diagnostic (validation accuracy, pooled, %)",
                "Every client's train split is cut 80/20 (fit / validation); round 0 runs once per seed and every "
                "variant replays rounds 1..R from the same warm start. Mean ± std over seeds.", "variant", per_seed)


if __name__ == "__main__":
    main()
