"""Compare WarmFed, FGL and the baselines over seeds: run every variant x seed, then write the report.

Every run goes through `flwr run` on ONE private simulation SuperLink (started here, stopped at the end,
also on Ctrl-C or an error), one run after the other, each writing ``<output-dir>/<variant-slug>-s<seed>/``.

Usage (from the repository root):

    python -m benchmarks.compare --suite global --seeds 0 1 --out results/global.md
    python -m benchmarks.compare --suite personal --seeds 0 1 2 --out results/personal.md
    # shrink every run; run only some variants (names as in the table):
    python -m benchmarks.compare --suite global --seeds 0 --only "FedAvg (5 rounds)" WarmFed \\
        --set train.rounds=2 data.max-per-domain=200 --out /tmp/cmp/global.md

Suites: ``global`` (global model: WarmFed, FGL, FedAvg with the same rounds and with 25 rounds,
centralized), ``ablation`` (WarmFed without parts of it, other synthesis settings) and ``personal`` (WarmFed
with DSD, pFedSD, Ditto, FedBN personalization, FedAvg + fine-tuning, and local-only).

``--set key=value`` (TOML scalars) applies to every variant, except keys a variant sets itself
(e.g. ``train.rounds`` of "FedAvg (25 rounds)"), which win and are reported. A finished run whose
resolved config matches is reused unless ``--force``, so an interrupted suite resumes where it stopped.
A failed run (non-zero `flwr run` exit, no finished metrics.json, or past ``--timeout``) is reported with the
tail of its output and shown as failed; the others go on. Exits 1 when a run failed, 2 on a bad argument or config.

The steps: benchmarks/suites.py plans the runs, benchmarks/run_suite.py runs them, and `warmfed-report` (the
warmfed_flwr.report package) writes ``--out`` (markdown), ``<out stem>.json`` (the per-run records) and
``<out stem>_figures/``. The markdown's ``Command:`` line is the `warmfed-report <run dirs> --out ...` command
that rebuilds it from the run directories without running anything.

Run directories inside the repository (e.g. results/runs/) are packed into every run's FAB by `flwr run .`
(its .json/.yaml/.md files) unless .gitignore excludes them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import ROOT
from benchmarks.run_suite import SuiteRun, machine_description, run_all
from benchmarks.suites import SUITE_TITLES, SUITES, RunPlan, parse_sets, plan_runs, select_variants
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.report.cli import main as report_main


def command_line(argv: Sequence[str]) -> str:
    """The command as typed: `python -m benchmarks.compare ...`."""
    return shlex.join(["python", "-m", "benchmarks.compare", *argv])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="markdown report (.md); <out stem>.json and <out stem>_figures/ are written too")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="run-config override for every variant (TOML scalar)")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="run only these variants")
    parser.add_argument("--output-dir", type=Path, help="run directories (default: <out parent>/runs/<suite>)")
    parser.add_argument("--cache-dir", default="", help="data/foundation cache (default: the project default)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run (default 6 h)")
    return parser.parse_args(argv)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (as a user would type it), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report_arguments(plans: list[RunPlan], out: Path, suite: str) -> list[str]:
    """The `warmfed-report` arguments that write ``out`` from the plans' run directories, in plan order."""
    return [*(shown(plan.run_dir) for plan in plans), "--out", shown(out), "--title", SUITE_TITLES[suite]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or reuse) every variant x seed, then write the report; 1 if a run failed, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out.expanduser().absolute()
    if out.suffix != ".md":
        print(f"error: --out {args.out}: name a .md file (the JSON and the figures go next to it)", file=sys.stderr)
        return 2
    run_root = (args.output_dir.expanduser().absolute() if args.output_dir else out.parent / "runs" / args.suite)
    cache_dir = str(Path(args.cache_dir).expanduser().absolute()) if args.cache_dir else ""
    try:
        overrides = parse_sets(args.sets)
        plans = plan_runs(select_variants(args.suite, args.only), args.seeds, overrides, run_root, cache_dir)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in dict.fromkeys(note for plan in plans for note in plan.notes):
        print(f"note: {line}", file=sys.stderr)
    if run_root.is_relative_to(ROOT) and not run_root.is_relative_to(ROOT / "results"):
        print(f"note: {run_root} lies inside the app directory: `flwr run .` packs its .json/.yaml/.md files into "
              "every run's FAB unless pyproject.toml's fab-exclude names it", file=sys.stderr)
    suite = SuiteRun(command_line(argv), machine_description(plans[0].cfg.device), overrides)
    try:
        run_all(plans, suite, args.force, args.timeout)
    except KeyboardInterrupt:
        print("interrupted: the SuperLink is stopped; rerun the same command to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return report_main(report_arguments(plans, out, args.suite))


if __name__ == "__main__":
    sys.exit(main())
