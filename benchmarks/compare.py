"""Compare WarmFed, FGL and the baselines over seeds and write one markdown table.

Every run goes through `flwr run` on ONE private simulation SuperLink (started here, stopped at the end,
also on Ctrl-C or an error), one run after the other, each writing ``<output-dir>/<variant-slug>-s<seed>/``.

Usage (from the repository root):

    python -m benchmarks.compare --suite global --seeds 0 1 --out results/global.md
    python -m benchmarks.compare --suite personal --seeds 0 1 2 --out results/personal.md
    # shrink every run; run only some variants (names as in the table):
    python -m benchmarks.compare --suite global --seeds 0 --only "FedAvg (5 rounds)" WarmFed \\
        --set train.rounds=2 data.max-per-domain=200 --out /tmp/cmp/global.md
    # rebuild the table (and the JSON) from the run directories, without running:
    python -m benchmarks.compare --suite global --seeds 0 1 --out results/global.md --table-only

Suites: ``global`` (global model: WarmFed, FGL, FedAvg with the same rounds and with 25 rounds,
centralized) and ``personal`` (WarmFed with DSD, pFedSD, Ditto, FedBN personalization, and local-only).

``--set key=value`` (TOML scalars) applies to every variant, except keys a variant sets itself
(e.g. ``train.rounds`` of "FedAvg (25 rounds)"), which win and are reported. A finished run whose
resolved config matches is reused unless ``--force``, so an interrupted suite resumes where it stopped.
A failed run (non-zero `flwr run` exit, no finished metrics.json, or past ``--timeout``) is reported with the
tail of its output and shown as failed; the others go on. Writes ``--out`` (markdown) and ``<out stem>.json``
(per-run final numbers); exits 1 when a run failed, 2 on a bad argument or config.

Run directories inside the repository (e.g. results/runs/) are packed into every run's FAB by `flwr run .`
(its .json/.yaml/.md files) unless .gitignore excludes them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.flower_harness import ROOT, Processes, descendant_groups, end_groups, flwr_run, read_metrics, start_superlink
from warmfed_flwr.config import ExperimentConfig, resolve
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.results import SYNTHETIC_QUALITY_PREFIX

NO_SYNTHETIC_FINETUNING = {"warmfed.client-syn-finetune": False, "warmfed.server-finetune": False}
SUITES: dict[str, dict[str, dict[str, Any]]] = {
    "global": {
        "WarmFed": {"algorithm": "warmfed"},
        "FGL": {"algorithm": "fgl"},
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
        "60 synthetic images per class": {"algorithm": "warmfed", "synthesis.images-per-class": 60},
    },
    "personal": {
        "WarmFed + DSD": {"algorithm": "warmfed", "personalization.method": "dsd"},
        "WarmFed + pFedSD": {"algorithm": "warmfed", "personalization.method": "pfedsd"},
        "WarmFed + Ditto": {"algorithm": "warmfed", "personalization.method": "ditto"},
        "WarmFed + FedBN": {"algorithm": "warmfed", "personalization.method": "fedbn"},
        "Local only": {"algorithm": "local"},
    },
}
RESERVED = ("seed", "output-dir", "run-name")
"""Keys the script sets per run: use --seeds and --output-dir instead of --set."""
IGNORED_IN_MATCH = ("output-dir", "cache-dir")
"""Config keys that do not decide whether a finished run can be reused."""
WARM_START = ("warmfed", "fgl")
GENERATIVE_SECTIONS = ("generator.", "lora.", "synthesis.", "warmfed.")
MARKER = "compare-run.json"
"""What this script records next to a run's metrics.json: exit code, wall seconds, command, machine."""
TAIL_LINES = 40


@dataclass
class RunPlan:
    """One variant x seed: its run config, resolved config and directory."""

    variant: str
    seed: int
    run_config: dict[str, Any]
    cfg: ExperimentConfig
    run_dir: Path


@dataclass
class Context:
    """What every run and the table header share."""

    suite: str
    command: str
    machine: str
    seeds: list[int]
    overrides: dict[str, Any]
    run_root: Path
    notes: list[str] = field(default_factory=list)


class PrivateLink:
    """One private simulation SuperLink for all runs; restartable after a run that timed out."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="compare-flwr-"))
        self.procs: Processes | None = None

    def start(self) -> None:
        """Start the SuperLink (registered as federation 'test' under a private FLWR_HOME)."""
        self.procs = Processes(self.home)
        start_superlink(self.procs, simulation=True)

    def stop(self) -> None:
        """End the SuperLink's process group, then the groups its descendants made (SuperExec, the run, Ray)."""
        if self.procs is None:
            return
        groups = set().union(*(descendant_groups(proc.pid) for proc in self.procs.procs))
        self.procs.stop()
        end_groups(groups - {os.getpgrp()})
        self.procs = None

    def restart(self) -> None:
        """Stop and start again, dropping whatever run the old SuperLink still had."""
        self.stop()
        self.start()


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
        for seed in seeds:
            run_config = {"device": "auto", **({"cache-dir": cache_dir} if cache_dir else {}), **overrides, **spec,
                          "output-dir": str(run_root), "run-name": f"{slug(name)}-s{seed}", "seed": seed}
            try:
                cfg = resolve(run_config)
            except ConfigError as exc:
                raise ConfigError(f"variant {name!r}: {exc}") from None
            plans.append(RunPlan(name, seed, run_config, cfg, run_root / run_config["run-name"]))
    return plans


def load_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None when absent or unreadable."""
    try:
        return read_metrics(run_dir)
    except (OSError, json.JSONDecodeError):
        return None


def read_marker(run_dir: Path) -> dict[str, Any]:
    """What this script recorded about the run ({} when it was not run by it)."""
    try:
        return json.loads((run_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def unfinished_reason(metrics: dict[str, Any] | None) -> str:
    """Why the run is not finished ('' when its last configured round was evaluated)."""
    if metrics is None:
        return "no metrics.json"
    rounds, expected = metrics.get("rounds") or [], metrics.get("config", {}).get("train.rounds")
    if not rounds:
        return "metrics.json has no rounds"
    last = rounds[-1]
    if last.get("round") != expected:
        return f"metrics.json stops at round {last.get('round')} of {expected}"
    if "global_acc_pooled" not in last and "personal_acc_mean" not in last:
        return f"round {expected} was never evaluated"
    return ""


def unused_key(key: str, cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s algorithm ignores ``key`` (so a different value there still allows reuse)."""
    if key in IGNORED_IN_MATCH:
        return True
    if key.startswith(GENERATIVE_SECTIONS):
        return cfg.algorithm not in WARM_START
    if key.startswith("personalization.") and key != "personalization.method":
        return cfg.personalization.method == "none"
    return (key == "train.proximal-mu" and cfg.algorithm != "fedprox") or (
        key == "train.centralized-epochs" and cfg.algorithm != "centralized")


def config_differences(plan: RunPlan, metrics: dict[str, Any]) -> list[str]:
    """Config keys (used by the algorithm) whose stored value differs from what this plan would run."""
    stored, wanted = metrics.get("config", {}), plan.cfg.to_flat()
    keys = sorted(k for k in set(stored) | set(wanted) if not unused_key(k, plan.cfg))
    return [f"{k}: run has {stored.get(k)!r}, wanted {wanted.get(k)!r}" for k in keys if stored.get(k) != wanted.get(k)]


def reuse_problem(plan: RunPlan) -> str:
    """Why the run directory holds no reusable run ('' when a finished, successful run of this config is there)."""
    metrics = load_metrics(plan.run_dir)
    reason = unfinished_reason(metrics)
    if reason:
        return reason
    if read_marker(plan.run_dir).get("returncode", 0) != 0:
        return "its `flwr run` failed"
    differences = config_differences(plan, metrics)
    return f"its config differs: {'; '.join(differences)}" if differences else ""


def clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's directory so that a failed rerun never shows the old numbers."""
    if not run_dir.exists():
        return
    if not any((run_dir / name).exists() for name in ("config.yaml", "metrics.json", MARKER)):
        raise RuntimeError(f"{run_dir} exists but is not a run directory; move it away")
    shutil.rmtree(run_dir)


def text_of(output: str | bytes | None) -> str:
    """Captured output as text."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def execute(link: PrivateLink, plan: RunPlan, ctx: Context, timeout: float) -> dict[str, Any]:
    """Run one plan through `flwr run`; write and return its marker (exit code, wall seconds, output tail)."""
    clear_run_dir(plan.run_dir)
    started = time.perf_counter()
    try:
        done = flwr_run(link.procs, plan.run_config, plan.cfg.data.num_clients, timeout)
        returncode, output = done.returncode, text_of(done.stdout) + text_of(done.stderr)
    except subprocess.TimeoutExpired as exc:
        returncode, output = 124, text_of(exc.stdout) + text_of(exc.stderr) + f"\n[timed out after {timeout:.0f} s]"
        link.restart()
    wall = time.perf_counter() - started
    reason = unfinished_reason(load_metrics(plan.run_dir))
    marker = {"variant": plan.variant, "seed": plan.seed, "returncode": returncode, "wall_seconds": wall,
              "command": ctx.command, "machine": ctx.machine, "date": now(), "run_config": plan.run_config}
    if returncode != 0 or reason:
        marker["failure"] = "; ".join(filter(None, [f"flwr exit code {returncode}" if returncode else "", reason]))
        marker["output_tail"] = tail(output)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / MARKER).write_text(json.dumps(marker, indent=1))
    return marker


def run_all(plans: list[RunPlan], ctx: Context, force: bool, timeout: float) -> None:
    """Run every plan not already finished, through one private SuperLink, printing a line per run."""
    pending = []
    for index, plan in enumerate(plans, 1):
        problem = "--force" if force else reuse_problem(plan)
        if not problem:
            print(progress_line(index, len(plans), plan, summarize_run(plan), "reused"), flush=True)
            continue
        pending.append(plan)
        if problem != "no metrics.json":
            print(f"note: {plan.variant} seed {plan.seed}: rerunning {plan.run_dir} ({problem})", file=sys.stderr)
    if not pending:
        return
    link = PrivateLink()
    previous = signal.signal(signal.SIGTERM, _terminate)
    failed = False
    try:
        link.start()
        for plan in pending:
            marker = execute(link, plan, ctx, timeout)
            print(progress_line(plans.index(plan) + 1, len(plans), plan, summarize_run(plan), "ran"), flush=True)
            if "failure" in marker:
                failed = True
                print(f"FAILED: {plan.variant} seed {plan.seed}: {marker['failure']}\n"
                      f"--- last lines of `flwr run` ---\n{marker['output_tail']}\n---", file=sys.stderr, flush=True)
    finally:
        link.stop()
        signal.signal(signal.SIGTERM, previous)
        if failed:
            print(f"SuperLink log kept in {link.home}", file=sys.stderr)
        else:
            shutil.rmtree(link.home, ignore_errors=True)


def _terminate(signum: int, _frame: Any) -> None:
    """SIGTERM ends the script through the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_of(rounds: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    """The largest ``key`` over rounds and its round (None when no round has it)."""
    points = [(row[key], row["round"]) for row in rounds if finite(row.get(key))]
    if not points:
        return None, None
    value, at = max(points, key=lambda p: p[0])
    return value, at


def final_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers a table needs from one finished run's metrics.json."""
    rounds = metrics["rounds"]
    round0 = next((row for row in rounds if row["round"] == 0), None)
    uploads = [row["bytes_up_per_client"] for row in rounds if finite(row.get("bytes_up_per_client"))]
    best_pooled, best_pooled_round = best_of(rounds, "global_acc_pooled")
    best_personal, best_personal_round = best_of(rounds, "personal_acc_mean")
    return {
        "first_round": rounds[0]["round"],
        "final_round": rounds[-1]["round"],
        "final": rounds[-1],
        "one_shot_pooled": round0.get("global_acc_pooled") if round0 else None,
        "round1_pooled": next((row.get("global_acc_pooled") for row in rounds if row["round"] == 1), None),
        "best_pooled": best_pooled,
        "best_pooled_round": best_pooled_round,
        "best_personal": best_personal,
        "best_personal_round": best_personal_round,
        "upload_per_client_total": sum(uploads) if uploads else None,
        "upload_per_client_round0": round0.get("bytes_up_per_client") if round0 else None,
        "time_seconds": metrics.get("time_seconds", {}),
        "events": [event.get("kind") for event in metrics.get("events", [])],
        "domains": metrics.get("config", {}).get("data.domains", ""),
        "synthetic_quality": {key.removeprefix(SYNTHETIC_QUALITY_PREFIX): value for key, value in (round0 or {}).items()
                              if key.startswith(SYNTHETIC_QUALITY_PREFIX)},
    }


def summarize_run(plan: RunPlan) -> dict[str, Any]:
    """One run's record: status (ok / failed / missing), marker fields and final numbers."""
    marker = read_marker(plan.run_dir)
    record: dict[str, Any] = {"variant": plan.variant, "seed": plan.seed, "run_dir": str(plan.run_dir),
                              **{k: marker[k] for k in ("returncode", "wall_seconds", "failure", "command",
                                                        "machine", "date") if k in marker}}
    metrics = load_metrics(plan.run_dir)
    reason = unfinished_reason(metrics)
    if metrics is None and not marker:
        return {**record, "status": "missing"}
    if reason or marker.get("returncode", 0) != 0:
        return {**record, "status": "failed", "failure": marker.get("failure", reason)}
    differences = config_differences(plan, metrics)
    if differences:
        record["config_differences"] = differences
    return {**record, "status": "ok", **final_numbers(metrics)}


def progress_line(index: int, total: int, plan: RunPlan, record: dict[str, Any], how: str) -> str:
    """'[i/n] variant seed s: ran in 42 s, final pooled 87.3% (round 5)'."""
    head = f"[{index}/{total}] {plan.variant} seed {plan.seed}:"
    if record["status"] != "ok":
        return f"{head} FAILED after {record.get('wall_seconds', 0.0):.0f} s ({record.get('failure', '')})"
    final = record["final"]
    labels = (("global_acc_pooled", "final pooled"), ("personal_acc_mean", "personalized"))
    result = ", ".join(f"{label} {100 * final[key]:.1f}%" for key, label in labels if finite(final.get(key)))
    seconds = record.get("wall_seconds", record["time_seconds"].get("total", math.nan))
    verb = f"ran in {seconds:.0f} s" if how == "ran" else f"reused (took {seconds:.0f} s)"
    return f"{head} {verb}, {result} (round {record['final_round']})"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    return statistics.fmean(values), statistics.pstdev(values)


def pct_cell(values: list[Any]) -> str:
    """Fractions as 'mean ± std' in percent with one decimal (just the mean for one value, '-' for none)."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


def seconds_cell(values: list[Any]) -> str:
    """Seconds as 'mean ± std', no decimals."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.0f}" if len(values) == 1 else f"{mean:.0f} ± {std:.0f}"


def bytes_cell(values: list[Any]) -> str:
    """A byte count (mean over seeds) in B / kB / MB / GB."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    size = statistics.fmean(values)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def rounds_label(rounds: list[Any]) -> str:
    """'r5' or 'r3/r5' for the rounds where seeds peaked."""
    found = sorted({r for r in rounds if r is not None})
    return "/".join(f"r{r}" for r in found)


def best_cell(values: list[Any], rounds: list[Any]) -> str:
    """The best value over rounds with the round(s) it was reached in."""
    cell = pct_cell(values)
    label = rounds_label(rounds)
    return f"{cell} ({label})" if cell != "-" and label else cell


def client_names(records: list[dict[str, Any]], prefix: str) -> list[str]:
    """Client names of ``prefix``<name> keys in the final rounds, in data.domains order, then the rest sorted."""
    skip = {"pooled", "mean", "std"}
    names = {key.removeprefix(prefix) for r in records for key in r["final"] if key.startswith(prefix)} - skip
    order = [d.strip() for r in records for d in str(r.get("domains", "")).split(",") if d.strip()]
    ranked = [n for n in dict.fromkeys(order) if n in names]
    return ranked + sorted(names - set(ranked))


def final_values(records: list[dict[str, Any]], key: str) -> list[Any]:
    """``key`` of the final round of every record."""
    return [r["final"].get(key) for r in records]


def method_cell(name: str, records: list[dict[str, Any]]) -> str:
    """The variant's name, noting seeds that failed or are missing."""
    bad = [r for r in records if r["status"] != "ok"]
    if not bad:
        return name
    statuses = sorted({r["status"] for r in bad})
    return f"{name} ({len(bad)}/{len(records)} seeds {'/'.join(statuses)})"


def global_row(name: str, records: list[dict[str, Any]], domains: list[str]) -> list[str]:
    """One row of the global table."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        status = "/".join(sorted({r["status"] for r in records}))
        return [name] + [status] * (7 + len(domains))
    warm = any(r["one_shot_pooled"] is not None for r in ok)
    return [
        method_cell(name, records),
        pct_cell([r["one_shot_pooled"] for r in ok]) if warm else "-",
        pct_cell([r["round1_pooled"] for r in ok]),
        pct_cell(final_values(ok, "global_acc_pooled")),
        best_cell([r["best_pooled"] for r in ok], [r["best_pooled_round"] for r in ok]),
        *[pct_cell(final_values(ok, f"global_acc_{d}")) for d in domains],
        bytes_cell([r["upload_per_client_total"] for r in ok]) if ok[0]["upload_per_client_total"] is not None
        else "n/a",
        bytes_cell([r["upload_per_client_round0"] for r in ok]) if warm else "-",
        seconds_cell([r["time_seconds"].get("total") for r in ok]),
    ]


def dsd_cell(records: list[dict[str, Any]]) -> str:
    """DSD teacher shares t-1 / t-2 at the final round, in percent (mean over seeds), '-' where absent."""
    shares = [final_values(records, key) for key in ("dsd_share_t1", "dsd_share_t2")]
    if not any(finite(v) for values in shares for v in values):
        return "-"
    cells = [f"{100 * statistics.fmean(vs):.0f}%" if (vs := [v for v in values if finite(v)]) else "-"
             for values in shares]
    return " / ".join(cells)


def personal_row(name: str, records: list[dict[str, Any]], clients: list[str]) -> list[str]:
    """One row of the personalization table."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        status = "/".join(sorted({r["status"] for r in records}))
        return [name] + [status] * (5 + len(clients))
    client_std = [v for v in final_values(ok, "personal_acc_std") if finite(v)]
    return [
        method_cell(name, records),
        pct_cell(final_values(ok, "personal_acc_mean")),
        f"{100 * statistics.fmean(client_std):.1f}" if client_std else "-",
        best_cell([r["best_personal"] for r in ok], [r["best_personal_round"] for r in ok]),
        *[pct_cell(final_values(ok, f"personal_acc_{c}")) for c in clients],
        pct_cell(final_values(ok, "global_acc_pooled")),
        dsd_cell(ok),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def by_variant(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by variant, in plan order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["variant"], []).append(record)
    return groups


def global_table(records: list[dict[str, Any]]) -> list[str]:
    """The global-model table."""
    ok = [r for r in records if r["status"] == "ok"]
    domains = client_names(ok, "global_acc_")
    header = ["method", "one-shot pooled (r0)", "pooled after round 1", "final pooled", "best pooled (round)",
              *[f"{d} final" for d in domains], "upload/client, all rounds", "upload/client, r0", "wall-clock s"]
    return markdown_table(header, [global_row(n, rs, domains) for n, rs in by_variant(records).items()])


def quality_table(records: list[dict[str, Any]]) -> list[str]:
    """Per-domain synthetic data quality of the warm-start variants ([] when no run recorded it)."""
    ok = [r for r in records if r["status"] == "ok" and r.get("synthetic_quality")]
    if not ok:
        return []
    domains = sorted({d for r in ok for d in r["synthetic_quality"]})
    rows = []
    for name, group in by_variant(ok).items():
        means = [statistics.fmean(r["synthetic_quality"].values()) for r in group]
        rows.append([name, *[pct_cell([r["synthetic_quality"].get(d) for r in group]) for d in domains],
                     pct_cell(means)])
    return ["", "Synthetic data quality per client domain (a classifier trained on that client's synthetic images "
            "only, tested on its real test split; %):", "",
            *markdown_table(["method", *domains, "mean"], rows)]


def personal_table(records: list[dict[str, Any]]) -> list[str]:
    """The personalization table."""
    ok = [r for r in records if r["status"] == "ok"]
    clients = client_names(ok, "personal_acc_")
    header = ["method", "personalized mean (final)", "std over clients", "best personalized mean (round)",
              *[f"{c} personal final" for c in clients], "global pooled final (ref.)", "DSD share t-1 / t-2 (final)"]
    return markdown_table(header, [personal_row(n, rs, clients) for n, rs in by_variant(records).items()])


def rounds_note(records: list[dict[str, Any]]) -> str:
    """Which rounds each variant's 'final' refers to."""
    parts = []
    for name, group in by_variant(records).items():
        spans = sorted({(r["first_round"], r["final_round"]) for r in group if r["status"] == "ok"})
        if spans:
            text = ", ".join((f"round {b}" if a == b else f"rounds {a}-{b}")
                             + (" (round 0 = one-shot warm start)" if a == 0 else "") for a, b in spans)
            parts.append(f"{name}: {text}")
    return "; ".join(parts)


def run_dirs_note(records: list[dict[str, Any]], run_root: Path) -> list[str]:
    """One line per variant naming its run directories."""
    lines = []
    for name, group in by_variant(records).items():
        dirs = ", ".join(f"`{Path(r['run_dir']).name}`" + ("" if r["status"] == "ok" else f" ({r['status']})")
                         for r in group)
        lines.append(f"- {name}: {dirs}")
    return [f"Per-run directories (metrics.json, summary.md, accuracy.png) under `{run_root}`:", *lines]


def header_lines(ctx: Context, records: list[dict[str, Any]]) -> list[str]:
    """Command, date, machine and seeds above the table."""
    title = {"global": "Global model", "ablation": "WarmFed ablation", "personal": "Personalized models"}[ctx.suite]
    seeds = ", ".join(map(str, ctx.seeds))
    spread = ("single seed: each cell is that run's value, no std" if len(ctx.seeds) == 1
              else "each cell is mean ± population std over seeds")
    lines = [f"# {title}: {', '.join(by_variant(records))}", "", f"Command: `{ctx.command}`", "",
             f"Date: {now()}  ", f"Machine: {ctx.machine}  ", f"Seeds: {seeds} ({spread}; accuracies in %)"]
    made_by = sorted({r["command"] for r in records if r.get("command") and r["command"] != ctx.command})
    machines = sorted({r["machine"] for r in records if r.get("machine") and r["machine"] != ctx.machine})
    if made_by:
        lines[-1] += "  "
        lines += [f"Runs made by: {', '.join(f'`{c}`' for c in made_by)}  "]
    if machines:
        lines += [f"Runs made on: {'; '.join(machines)}"]
    return [*lines, ""]


def notes_lines(ctx: Context, records: list[dict[str, Any]]) -> list[str]:
    """The notes below the table."""
    common = ("Final = the last round; best = the maximum over all evaluated rounds of each seed (never mixed "
              "with final), with the round(s) reached in.")
    if ctx.suite != "personal":
        specific = ("One-shot = round 0 of the warm-start methods (before any federated round). Upload/client = "
                    "the largest client upload of each round (bytes_up_per_client) summed over rounds; r0 = the "
                    "round-0 upload (adapter + prompt embeddings), included in the total; n/a = centralized (no "
                    "model uploads; the data is pooled). Wall-clock = time_seconds.total of the run (from the "
                    "ServerApp's start, without `flwr run` and Ray start-up; the JSON has the script's wall "
                    "seconds per run).")
    else:
        specific = ("Personalized = each client's personalized model on its own test split; mean over clients, "
                    "± std over seeds; 'std over clients' = the population std over clients, mean over seeds. "
                    "Global pooled = the global model, for reference ('-' for local-only). DSD shares = the "
                    "fraction of samples whose teacher is round t-1 / t-2 at the final round.")
    lines = ["", "Notes:", "", f"- {common}", f"- {specific}", f"- Rounds: {rounds_note(records)}."]
    if ctx.overrides:
        lines.append("- Overrides for every variant: " + ", ".join(f"`{k}={v!r}`" for k, v in ctx.overrides.items()))
    lines += [f"- {note}" for note in ctx.notes]
    differing = [f"{r['variant']} s{r['seed']}" for r in records if r.get("config_differences")]
    if differing:
        lines.append(f"- Config of these runs differs from this command's (keys in the JSON): {', '.join(differing)}")
    return [*lines, "", *run_dirs_note(records, ctx.run_root), ""]


def render(ctx: Context, records: list[dict[str, Any]]) -> str:
    """The whole markdown document."""
    table = personal_table(records) if ctx.suite == "personal" else global_table(records) + quality_table(records)
    return "\n".join([*header_lines(ctx, records), *table, *notes_lines(ctx, records)])


def now() -> str:
    """The local date and time, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def torch_device(setting: str) -> str:
    """The device the runs' server process resolves ``device`` to on this machine."""
    import torch

    if setting != "cpu" and torch.cuda.is_available():
        return (f"cuda ({torch.cuda.get_device_name(0)}) for the ServerApp; ClientApps get a GPU only if the "
                "federation's client-resources ask for one (Flower's default: num-gpus 0)")
    return "cpu" if setting in ("auto", "cpu") else f"{setting} (not available here)"


def machine_description(device_setting: str) -> str:
    """Processor, core count and torch device."""
    processor = platform.processor() or platform.machine()
    return f"{processor}, {os.cpu_count()} cores, {platform.system()}; torch device {torch_device(device_setting)}"


def command_line(argv: Sequence[str]) -> str:
    """The command as typed: `python -m benchmarks.compare ...`."""
    return shlex.join(["python", "-m", "benchmarks.compare", *argv])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table; <out stem>.json is written too")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="run-config override for every variant (TOML scalar)")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="run only these variants")
    parser.add_argument("--output-dir", type=Path, help="run directories (default: <out parent>/runs/<suite>)")
    parser.add_argument("--cache-dir", default="", help="data/foundation cache (default: the project default)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the run directories")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run (default 6 h)")
    return parser.parse_args(argv)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as null, so that any JSON reader can load it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_outputs(ctx: Context, out: Path, records: list[dict[str, Any]]) -> Path:
    """Write the markdown table to ``out`` and the records to ``<out stem>.json``; return the JSON path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(ctx, records))
    raw = out.with_suffix(".json")
    doc = {"suite": ctx.suite, "command": ctx.command, "date": now(), "machine": ctx.machine, "seeds": ctx.seeds,
           "overrides": ctx.overrides, "run_root": str(ctx.run_root), "runs": records}
    raw.write_text(json.dumps(strict_json(doc), indent=1, allow_nan=False))
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or reuse) every variant x seed, then write the table; 1 if a run failed, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out.expanduser().absolute()
    run_root = (args.output_dir.expanduser().absolute() if args.output_dir else out.parent / "runs" / args.suite)
    cache_dir = str(Path(args.cache_dir).expanduser().absolute()) if args.cache_dir else ""
    try:
        overrides = parse_sets(args.sets)
        variants = select_variants(args.suite, args.only)
        plans = plan_runs(variants, args.seeds, overrides, run_root, cache_dir)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = Context(args.suite, command_line(argv), machine_description(plans[0].cfg.device), list(args.seeds),
                  overrides, run_root, notes=shadowed(overrides, variants))
    for line in ctx.notes:
        print(f"note: {line}", file=sys.stderr)
    if run_root.is_relative_to(ROOT) and not args.table_only:
        print(f"note: {run_root} lies inside the app directory: `flwr run .` packs its .json/.yaml/.md files into "
              "every run's FAB unless .gitignore excludes them", file=sys.stderr)
    if not args.table_only:
        try:
            run_all(plans, ctx, args.force, args.timeout)
        except KeyboardInterrupt:
            print("interrupted: the SuperLink is stopped; rerun the same command to resume", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    records = [summarize_run(plan) for plan in plans]
    for record in records:
        for line in record.get("config_differences", []):
            print(f"warning: {record['variant']} seed {record['seed']}: {line}", file=sys.stderr)
    raw = write_outputs(ctx, out, records)
    print(f"wrote {out} and {raw}")
    bad = [r for r in records if r["status"] != "ok"]
    for record in bad:
        detail = f" ({record['failure']})" if record.get("failure") else ""
        print(f"{record['status']}: {record['variant']} seed {record['seed']}{detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
