"""results/generator.md: can the default generator draw every client's domain?

    python -m benchmarks.generator_report --seeds 0 1 2 --compare /tmp/styled-foundation/vae --out results/generator.md

Three parts, on the clients' real train and test splits of the default digits benchmark (the defaults were chosen
beforehand on validation splits with benchmarks/diagnose_lora.py):
- the VAE: a judge trained on each domain's real train images, on its test images before and after encode -> decode
  (benchmarks/vae_reconstruction.py), with the flat-colour round trip and a grid; ``--compare`` adds another
  generator's or VAE's figures (e.g. the candidate of benchmarks/styled_foundation.py);
- the foundation's own quality on its public holdout (its model card);
- per domain and method (FGL with domain-name prompts, FGL with descriptive prompts, WarmFed): class fidelity of the
  synthetic images judged by that domain's real-image judge, and train-on-synthetic/test-on-real (TSTR).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from benchmarks import diagnose_lora
from benchmarks.vae_reconstruction import markdown as vae_markdown
from benchmarks.vae_reconstruction import measure
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import default_cache_dir
from warmfed_flwr.generative.pipeline import resolve_base

METHODS = {
    "FGL (domain-name prompts)": "no adapter (FGL)",
    "FGL (descriptive prompts)": "no adapter, descriptive prompts (FGL)",
    "WarmFed (adapter)": "default",
}
"""Report rows -> benchmarks.diagnose_lora variants."""
NON_PUBLIC = ("digits", "fonts", "mnistm")


def _cell(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}"


def method_table(seeds: list[int], cache_dir: Path, grids: Path) -> tuple[list[str], dict]:
    """The per-domain, per-method table (mean ± std over seeds) and its raw figures."""
    selected = {variant: diagnose_lora.VARIANTS[variant] for variant in METHODS.values()}
    diagnose_lora.VARIANTS.clear()
    diagnose_lora.VARIANTS.update(selected)
    per_seed = [diagnose_lora.run_seed(seed, {}, cache_dir, grids, test_splits=True) for seed in seeds]
    clients = list(next(iter(per_seed[0].values())))
    lines = ["| method | " + " | ".join(f"{c} fidelity | {c} TSTR" for c in clients)
             + " | mean fidelity (digits, fonts, mnistm) | mean TSTR (digits, fonts, mnistm) |",
             "|---|" + "---|---|" * len(clients) + "---|---|"]
    raw: dict = {}
    for method, variant in METHODS.items():
        cells = []
        for client in clients:
            cells.append(_cell([result[variant][client][1] for result in per_seed]))
            cells.append(_cell([result[variant][client][0] for result in per_seed]))
        for index in (1, 0):
            cells.append(_cell([statistics.mean(result[variant][c][index] for c in NON_PUBLIC if c in clients)
                                for result in per_seed]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        raw[method] = [{c: {"tstr": r[variant][c][0], "fidelity": r[variant][c][1]} for c in clients}
                       for r in per_seed]
    return lines, raw


def main() -> None:
    """Measure and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compare", default=None, help="another generator or VAE directory whose VAE to show beside")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grids", type=Path, default=Path("/tmp/generator_report"))
    args = parser.parse_args()
    cache_dir = default_cache_dir()
    base = resolve_base(resolve({}).generator, cache_dir)
    figures_dir = args.out.parent / "generator_figures"
    command = (f"python -m benchmarks.generator_report --seeds {' '.join(map(str, args.seeds))}"
               + (f" --compare {args.compare}" if args.compare else "") + f" --out {args.out}")
    lines = ["# Generator: can it draw every client's domain?", "", f"Command: `{command}`", "", "## VAE", ""]
    vae = {"default": measure(base, cache_dir, figures_dir / "vae_reconstruction.png")}
    lines += [vae_markdown(base, vae["default"]), "",
              "![real rows above reconstructed rows](generator_figures/vae_reconstruction.png)", ""]
    if args.compare:
        vae["compared"] = measure(args.compare, cache_dir, None)
        lines += ["Compared with:", "", vae_markdown(args.compare, vae["compared"]), ""]
    card = json.loads((Path(base) / "model_card.json").read_text()) if (Path(base) / "model_card.json").is_file() \
        else json.loads((Path(base) / "quality.json").read_text())
    quality = card["quality"]
    lines += ["## Foundation (its public holdout)", "",
              f"Class fidelity {100 * quality['class_fidelity_mean']:.1f} %, train-on-synthetic/test-on-real "
              f"{100 * quality['train_synthetic_test_real_acc']:.1f} % (train-on-real "
              f"{100 * quality['train_real_test_real_acc']:.1f} %), prompts with the phrase "
              f"'{quality.get('domain_phrase', '')}'."]
    plain = card.get("plain_prompt_quality")
    if plain:
        lines[-1] += (f" With the plain class prompt (no style phrase: the foundation draws its style mixture): class "
                      f"fidelity {100 * plain['class_fidelity_mean']:.1f} %, train-on-synthetic/test-on-real "
                      f"{100 * plain['train_synthetic_test_real_acc']:.1f} %.")
    lines += ["", "## Synthetic images per domain and method (test splits, mean ± std over seeds, %)", ""]
    table, raw = method_table(args.seeds, cache_dir, args.grids)
    lines += table
    seed = args.seeds[0]
    lines += ["", f"Grids (seed {seed}, one row per class):", ""]
    for method, variant in METHODS.items():
        slug = "".join(c if c.isalnum() else "-" for c in variant).strip("-")
        for grid in sorted((args.grids / f"s{seed}-{slug}").glob("synthetic_*.png")):
            target = figures_dir / f"{slug}-{grid.name}"
            shutil.copyfile(grid, target)
            lines.append(f"- {method}, {grid.stem.removeprefix('synthetic_')}: ![]({figures_dir.name}/{target.name})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"vae": vae, "quality": quality, "methods": raw}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
