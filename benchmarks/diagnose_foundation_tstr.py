"""Why the foundation's train-on-synthetic/test-on-real (TSTR) trails train-on-real on its public holdout.

The model card's figure trains on 50 generated images per class (500 images, 10 DDIM steps, guidance 3.0) and
compares with a classifier trained on all 1,600 real training images: a size gap as well as a quality gap. This
benchmark separates them on the held-out public digits (the model card's split and style phrase), per seed:

    python -m benchmarks.diagnose_foundation_tstr --seeds 0 1 2 --out results/diagnose_foundation_tstr.md
    python -m benchmarks.diagnose_foundation_tstr --pipeline /tmp/curriculum8w --seeds 0     # a candidate build

Rows: real images at both sizes, then generated images at the card's setting, at about the real set's size (160 per
class), and at the card's size with more sampling steps and with a lower and a higher guidance scale.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.config.schema import ModelConfig
from warmfed_flwr.data import default_cache_dir, load_public_pool
from warmfed_flwr.generative.images import dataset_tensors
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base
from warmfed_flwr.generative.prompts import DEFAULT_TEMPLATE
from warmfed_flwr.generative.quality import foundation_quality, split_holdout
from warmfed_flwr.generative.styles import source_phrase
from warmfed_flwr.learning.models import seeded_model
from warmfed_flwr.learning.training import evaluate, train_epochs

SETTINGS = {
    "generated, 50 per class, 10 steps, guidance 3 (model card)": (50, 10, 3.0),
    "generated, 160 per class, 10 steps, guidance 3": (160, 10, 3.0),
    "generated, 50 per class, 50 steps, guidance 3": (50, 50, 3.0),
    "generated, 50 per class, 10 steps, guidance 1.5": (50, 10, 1.5),
    "generated, 50 per class, 10 steps, guidance 6": (50, 10, 6.0),
}


def real_subset_accuracy(train: TensorDataset, test: TensorDataset, per_class: int, seed: int) -> float:
    """Accuracy on ``test`` of the card's classifier trained on a seeded ``per_class`` real images of each class."""
    images, labels = dataset_tensors(train)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    keep = torch.cat([order[labels[order] == c][:per_class] for c in labels.unique()])
    model = seeded_model(ModelConfig(), int(labels.max()) + 1, seed + 1)
    train_epochs(model, TensorDataset(images[keep], labels[keep]), epochs=10, lr=0.01, batch_size=32,
                 device=torch.device("cpu"), seed=seed)
    return evaluate(model, test, torch.device("cpu"))[1]


def measure(pipeline: str, seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per row: TSTR (or real accuracy) and class fidelity per seed, in %."""
    pipe = load_pipeline(pipeline, torch.device("cpu"), "float32")
    pool, class_names = load_public_pool("digits", 32, default_cache_dir())
    train, holdout = split_holdout(pool, 0.2, 0)
    phrase = source_phrase(dataset_tensors(holdout)[0])
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        for name, (per_class, steps, guidance) in SETTINGS.items():
            quality = foundation_quality(pipe, train, class_names, DEFAULT_TEMPLATE, holdout, per_class, steps,
                                         guidance, seed, torch.device("cpu"), domain_phrase=phrase)
            row = rows.setdefault(name, {"accuracy": [], "fidelity": []})
            row["accuracy"].append(100 * quality["train_synthetic_test_real_acc"])
            row["fidelity"].append(100 * quality["class_fidelity_mean"])
            print(f"seed {seed} {name}: TSTR {row['accuracy'][-1]:.1f}, fidelity {row['fidelity'][-1]:.1f}",
                  flush=True)
        for per_class, name in ((len(train), "real, all 1,600 training images"), (50, "real, 50 per class")):
            rows.setdefault(name, {"accuracy": [], "fidelity": []})["accuracy"].append(
                100 * real_subset_accuracy(train, holdout, per_class, seed))
    return rows


def cell(values: list[float]) -> str:
    """Mean ± population std, or '-' for no values."""
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def markdown(command: str, rows: dict[str, dict[str, list[float]]]) -> str:
    """The report."""
    lines = [
        "# Foundation: train-on-synthetic against train-on-real on the public holdout", "",
        f"Command: `{command}`", "",
        "400 held-out public digits (the model card's split), prompts with their style phrase; the same classifier "
        "and 10 epochs for every row; mean ± std over seeds, %. Class fidelity: a judge trained on the 1,600 real "
        "training images scores the generated images.", "",
        "| training images | accuracy on the real holdout | class fidelity |", "|---|---|---|",
    ]
    order = sorted(rows, key=lambda name: not name.startswith("real"))
    lines += [f"| {name} | {cell(rows[name]['accuracy'])} | {cell(rows[name]['fidelity'])} |" for name in order]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure and print (or write) the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="a diffusers directory (default: the shipped foundation)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pipeline = args.pipeline or resolve_base(resolve({}).generator, default_cache_dir())
    command = shlex.join(["python", "-m", "benchmarks.diagnose_foundation_tstr", *sys.argv[1:]])
    report = markdown(command, measure(pipeline, args.seeds))
    if args.out:
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
