"""Is the synthetic data's quality what keeps globalization level with warm start + FedAvg? A real-image control.

Each client's train split is cut into fit (60 %), a held-out real pool (20 %) and validation (20 %). Round 0
(client LoRA on the fit part, server synthesis, one-shot training) runs once per seed; then rounds 1..R are
replayed from the same warm start (as benchmarks/diagnose_globalization.py does) with the globalization subset
drawn from three sources: none (warm start + FedAvg), the synthetic subset (WarmFed), and the same number of REAL
images per class from the clients' held-out pools (a perfect generator's subset, class-balanced over the clients).
Only validation splits are scored; the test splits that results/*.md report are never touched.

    python -m benchmarks.diagnose_subset_quality --seeds 0 --out results/diagnose_subset_quality.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.diagnose_globalization import overrides_of, parse_args, replay, validation_splits, write_table
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import ClientSplit, ImageArrayDataset, default_cache_dir
from warmfed_flwr.data.partition import stratified_split
from warmfed_flwr.generative.synthesis import quantize
from warmfed_flwr.learning.training import resolve_device, seed_everything
from warmfed_flwr.methods.round0_upload import client_upload, default_domain_phrase
from warmfed_flwr.methods.warmstart import SyntheticWarmStart

POOL_SHARE = 0.25
"""Share of each client's fit part held out as its real pool (0.25 of 80 % = 20 % of the train split)."""
VARIANTS: dict[str, dict[str, Any]] = {
    "warm start + FedAvg (no subset)": {"subset": "none"},
    "WarmFed, synthetic subset": {"subset": "synthetic"},
    "WarmFed, real held-out subset of the same size": {"subset": "real"},
    "WarmFed, real subset, synthetic lr x1": {"subset": "real", "syn_lr_scale": 1.0},
}


def held_out_pools(clients: list[ClientSplit], seed: int) -> tuple[list[ClientSplit], ImageArrayDataset]:
    """The clients with their fit part cut again, and the union of the held-out real pools (uint8)."""
    kept, pool_images, pool_labels = [], [], []
    for index, client in enumerate(clients):
        images, labels = client.train.tensors
        fit, pool = stratified_split(labels.numpy(), POOL_SHARE, np.random.default_rng([seed, index, 11]))
        uint8 = np.ascontiguousarray(quantize(images).transpose(0, 2, 3, 1))
        kept.append(ClientSplit(client.name, client.domain, ImageArrayDataset(uint8[fit], labels.numpy()[fit]),
                                client.test))
        pool_images.append(uint8[pool])
        pool_labels.append(labels.numpy()[pool])
    return kept, ImageArrayDataset(np.concatenate(pool_images), np.concatenate(pool_labels))


def real_subset_like(subset: ImageArrayDataset, pool: ImageArrayDataset, seed: int) -> ImageArrayDataset:
    """As many real pool images per class as ``subset`` has, drawn at random (fewer where the pool runs out)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in zip(*np.unique(np.asarray(subset.labels), return_counts=True), strict=True):
        members = np.flatnonzero(np.asarray(pool.labels) == label)
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    index = np.sort(np.concatenate(chosen))
    return ImageArrayDataset(np.asarray(pool.images)[index], np.asarray(pool.labels)[index])


def run_seed(seed: int, overrides: dict[str, Any], cache_dir: Path) -> dict[str, list[float]]:
    """Round 0 once, then every variant's rounds, for one seed."""
    cfg = resolve({**overrides, "seed": seed})
    seed_everything(seed)
    device = resolve_device(cfg.device)
    class_names, clients = validation_splits(cfg, cache_dir)
    clients, pool = held_out_pools(clients, seed)
    uploads = []
    for client in clients:
        named, _ = client_upload(cfg, client, class_names, device, cache_dir,
                                 default_domain_phrase(cfg.generator, client.domain))
        uploads.append((client.name, named))
    warm_start = SyntheticWarmStart(cfg, class_names, device, cache_dir, Path(f"/tmp/diagnose_subset_quality/s{seed}"))
    warm_start.build_synthetic(uploads)
    warm_start.release_generator()
    synthetic_subset = warm_start.subset
    real = real_subset_like(synthetic_subset, pool, seed)
    print(f"seed {seed}: synthetic subset {len(synthetic_subset)} images, real subset {len(real)}", flush=True)
    warm = [w.copy() for w in warm_start.train_warm_start()]
    results = {}
    for name, change in VARIANTS.items():
        source = change["subset"]
        knobs = {k: v for k, v in change.items() if k != "subset"}
        if source == "none":
            knobs.update(client_syn_finetune=False, server_finetune=False)
        warm_start.subset = real if source == "real" else synthetic_subset
        variant = cfg.model_copy(update={"warmfed": cfg.warmfed.model_copy(update=knobs)})
        results[name] = replay(warm_start, warm, clients, variant, device)
        print(f"seed {seed} {name}: " + " ".join(f"{100 * a:.1f}" for a in results[name]), flush=True)
    return results


def main() -> None:
    """Run the seeds and write the markdown table."""
    args = parse_args(__doc__)
    per_seed = [run_seed(seed, overrides_of(args), default_cache_dir()) for seed in args.seeds]
    write_table(args, "benchmarks.diagnose_subset_quality",
                "Globalization with a synthetic or a real subset (validation accuracy, pooled, %)",
                "Each client's train split: fit 60 %, a held-out real pool 20 %, validation 20 %. Round 0 runs once "
                "per seed; every variant replays rounds 1..R from the same warm start. Mean ± std over seeds.",
                "subset used for globalization", per_seed)


if __name__ == "__main__":
    main()
