"""Why does an adapter wash out the class? Client LoRA variants scored on validation data, per domain.

For every client, round 0 runs with each LoRA variant (the upload cache keys on the LoRA config, so each variant
trains its own adapter); the server synthesizes that client's images and two figures are taken on the client's
validation part (a seeded fifth of its private train split; the test splits are never read):

- train-on-synthetic/test-on-real (TSTR): a classifier trained on the client's synthetic images;
- class fidelity: a judge trained on the client's real fit part labels the synthetic images. Low fidelity with the
  domain's look in the grids is a washed-out class; low TSTR with high fidelity is a domain or diversity gap.

    python -m benchmarks.diagnose_lora --seeds 0 --out results/diagnose_lora.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset, TensorDataset

from benchmarks.colour_public_pool import recoloured
from benchmarks.diagnose_globalization import validation_splits
from benchmarks.suites import DESCRIPTIVE_PHRASES
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import ClientSplit, default_cache_dir, load_benchmark
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import predict_logits, resolve_device, seed_everything, train_epochs
from warmfed_flwr.methods.round0_upload import client_upload, default_domain_phrase
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.wire.protocol import EMBEDDINGS

ATTN_SELF_AND_CONV = "attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0,conv1,conv2"
CROSS_KV = "attn2.to_k,attn2.to_v"
VARIANTS: dict[str, dict[str, Any]] = {
    "no adapter (FGL)": {"lora.enabled": False},
    "no adapter, descriptive prompts (FGL)": {"lora.enabled": False, "generator.domain-phrases": DESCRIPTIVE_PHRASES},
    "default": {},
    "trailing timestep spacing": {"synthesis.timestep-spacing": "trailing"},
    "train embeddings": {"lora.train-embeddings": True},
    "min-SNR 5": {"lora.snr-gamma": 5.0},
    "rank 4": {"lora.rank": 4, "lora.alpha": 4.0},
    "cross-attention K/V only": {"lora.targets": CROSS_KV},
    "cross-attention K/V only, train embeddings": {"lora.targets": CROSS_KV, "lora.train-embeddings": True},
    "steps 25": {"lora.steps": 25},
    "steps 300": {"lora.steps": 300},
    "lr 1e-4": {"lora.lr": 1e-4},
    "lr 1e-4, steps 300": {"lora.lr": 1e-4, "lora.steps": 300},
    "no cross-attention targets": {"lora.targets": ATTN_SELF_AND_CONV},
    "attention only (paper's diffusers script)": {"lora.targets": "to_q,to_k,to_v,to_out.0"},
    "guidance 6": {"synthesis.guidance": 6.0},
}


def real_judges(cfg: ExperimentConfig, clients: list, num_classes: int,
                device: torch.device) -> dict[str, torch.nn.Module]:
    """Per client, a classifier trained on its real fit part: it scores how recognisable synthetic classes are."""
    judges = {}
    for client in clients:
        judge = seeded_model(cfg.model, num_classes, cfg.seed)
        train_epochs(judge, client.train, epochs=cfg.warmfed.warm_epochs, lr=cfg.train.lr,
                     batch_size=cfg.train.batch_size, device=device, seed=cfg.seed)
        judges[client.name] = judge.eval()
    return judges


def fidelity(judge: torch.nn.Module, synthetic: Dataset, labels: torch.Tensor, device: torch.device) -> float:
    """Share of synthetic images the real-data judge labels with their prompt's class."""
    predicted = predict_logits(judge, synthetic, device).argmax(1)
    return float((predicted == labels).float().mean())


def recolour_split(client: ClientSplit, seed: int) -> ClientSplit:
    """``client`` with its fit and validation images recoloured as the colour public pool is (a third kept grey, a
    third flat colours, a third over photo crops): the same shapes in colours the foundation never drew."""

    def recolour(part: TensorDataset, offset: int) -> TensorDataset:
        images, labels = part.tensors
        grey = images.mul(255.0).round().byte().permute(0, 2, 3, 1).numpy()
        coloured = torch.from_numpy(recoloured(grey, seed + offset)).permute(0, 3, 1, 2).float().div(255.0)
        return TensorDataset(coloured.contiguous(), labels)

    return ClientSplit(client.name, client.domain, recolour(client.train, 0), recolour(client.test, 1))


def run_seed(seed: int, overrides: dict[str, Any], cache_dir: Path, out_dir: Path,
             domains: list[str] | None = None, recolour: bool = False,
             test_splits: bool = False) -> dict[str, dict[str, tuple]]:
    """Every variant's (TSTR, fidelity) per client (of ``domains``, default all; ``recolour``: its images
    recoloured) for one seed, on validation splits, or with ``test_splits`` on the clients' train and test splits
    (for reporting chosen defaults only)."""
    base_cfg = resolve({**overrides, "seed": seed})
    device = resolve_device(base_cfg.device)
    if test_splits:
        benchmark = load_benchmark(base_cfg.data, seed, cache_dir)
        class_names, clients = benchmark.class_names, benchmark.clients
    else:
        class_names, clients = validation_splits(base_cfg, cache_dir)
    clients = [client for client in clients if not domains or client.domain in domains]
    if recolour:
        clients = [recolour_split(client, seed) for client in clients]
    judges = real_judges(base_cfg, clients, len(class_names), device)
    results: dict[str, dict[str, tuple]] = {}
    for name, change in VARIANTS.items():
        started = time.perf_counter()
        seed_everything(seed)
        cfg = resolve({**overrides, **change, "seed": seed})
        uploads = []
        for client in clients:
            phrase = default_domain_phrase(cfg.generator, client.domain)
            named, _ = client_upload(cfg, client, class_names, device, cache_dir, phrase)
            uploads.append((client.name, named if cfg.lora.enabled else {EMBEDDINGS: named[EMBEDDINGS]}))
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        warm_start = SyntheticWarmStart(cfg, class_names, device, cache_dir, out_dir / f"s{seed}-{slug}")
        synthetic = warm_start.build_synthetic(uploads)
        tstr = warm_start.synthetic_quality({client.name: client.test for client in clients})
        row = {}
        for client in clients:
            mine = torch.tensor([i for i, source in enumerate(synthetic.sources) if source == client.name])
            row[client.name] = (tstr[client.name], fidelity(judges[client.name], synthetic.dataset(mine),
                                                            synthetic.labels[mine], device))
        results[name] = row
        print(f"seed {seed} {name}: " + ", ".join(f"{c} tstr {100 * t:.1f} fid {100 * f:.1f}"
                                                  for c, (t, f) in row.items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def _cell(values: list[float]) -> str:
    """A percentage, with ± the population std when there are several seeds."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}"


def main() -> None:
    """Run the seeds and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="sets", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--domains", nargs="*", default=None, help="client domains to run (default: all)")
    parser.add_argument("--recolour", action="store_true",
                        help="recolour the clients' images (does colour alone wash out the class?)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grids", type=Path, default=Path("/tmp/diagnose_lora"))
    args = parser.parse_args()
    if args.only:
        for name in list(VARIANTS):
            if name not in args.only:
                del VARIANTS[name]
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.sets)}
    per_seed = [run_seed(seed, overrides, default_cache_dir(), args.grids, args.domains, args.recolour)
                for seed in args.seeds]
    clients = list(next(iter(per_seed[0].values())))
    lines = [
        "# Client LoRA diagnostic (validation accuracy, %)", "",
        f"Command: `python -m benchmarks.diagnose_lora --seeds {' '.join(map(str, args.seeds))}"
        + (f" --set {' '.join(args.sets)}" if args.sets else "")
        + (f" --only {' '.join(repr(v) for v in VARIANTS)}" if args.only else "")
        + (f" --domains {' '.join(args.domains)}" if args.domains else "")
        + (" --recolour" if args.recolour else "") + f" --out {args.out}`", "",
        "Per client: TSTR = a classifier trained on its synthetic images, tested on its validation part; "
        "fidelity = a judge trained on its real fit part labels the synthetic images. Mean ± std over seeds.", "",
        "| variant | " + " | ".join(f"{c} TSTR | {c} fidelity" for c in clients) + " | mean TSTR (non-public) |",
        "|---|" + "---|---|" * len(clients) + "---|",
    ]
    non_public = [c for c in clients if c != "mnist"]
    for name in VARIANTS:
        cells = []
        for client in clients:
            cells.append(_cell([result[name][client][0] for result in per_seed]))
            cells.append(_cell([result[name][client][1] for result in per_seed]))
        mean = (_cell([statistics.mean(result[name][c][0] for c in non_public) for result in per_seed])
                if non_public else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

