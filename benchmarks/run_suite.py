"""Run a planned suite through `flwr run` on one private simulation SuperLink, reusing finished runs.

Every run writes ``<output-dir>/<variant-slug>-s<seed>/`` and, next to its metrics.json, a compare-run.json marker
(variant, seed, exit code, wall seconds, command, machine, date, --set overrides; the failure and the tail of the
output when it failed) that `warmfed-report` reads.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import Processes, descendant_groups, end_groups, flwr_run, start_superlink
from benchmarks.suites import RunPlan
from warmfed_flwr.config.loading import key_is_used
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.report.collect import (
    MARKER,
    ReportInputError,
    collect_run,
    finite,
    load_metrics,
    read_marker,
    unfinished_reason,
)

IGNORED_IN_MATCH = ("output-dir", "cache-dir")
"""Config keys that do not decide whether a finished run can be reused."""
TAIL_LINES = 40


@dataclass
class SuiteRun:
    """What every run of one compare invocation records in its marker."""

    command: str
    machine: str
    overrides: dict[str, Any]


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


def decides_reuse(cfg: ExperimentConfig, key: str) -> bool:
    """Whether a stored value of ``key`` must match for reuse: ``cfg``'s algorithm reads it, or this version no
    longer knows the key (the run was made by another version)."""
    if key in IGNORED_IN_MATCH:
        return False
    try:
        return key_is_used(cfg, key)
    except ConfigError:
        return True


def config_differences(plan: RunPlan, metrics: dict[str, Any]) -> list[str]:
    """Config keys (used by the algorithm) whose stored value differs from what this plan would run; a key the run's
    version did not have yet counts as its default (new keys default to the behaviour before them)."""
    stored, wanted = {**ExperimentConfig().to_flat(), **metrics.get("config", {})}, plan.cfg.to_flat()
    keys = sorted(k for k in set(stored) | set(wanted) if decides_reuse(plan.cfg, k))
    return [f"{k}: run has {stored.get(k)!r}, wanted {wanted.get(k)!r}" for k in keys if stored.get(k) != wanted.get(k)]


def reuse_problem(plan: RunPlan) -> str:
    """Why the run directory holds no reusable run ('' when a finished, successful run of this config is there)."""
    try:
        metrics = load_metrics(plan.run_dir)
    except ReportInputError:
        return "its metrics.json is unreadable"
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


def now() -> str:
    """The local date and time, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def execute(link: PrivateLink, plan: RunPlan, suite: SuiteRun, timeout: float) -> dict[str, Any]:
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
    try:
        reason = unfinished_reason(load_metrics(plan.run_dir))
    except ReportInputError as exc:
        reason = str(exc)
    marker = {"variant": plan.variant, "seed": plan.seed, "returncode": returncode, "wall_seconds": wall,
              "command": suite.command, "machine": suite.machine, "date": now(), "overrides": suite.overrides,
              "notes": plan.notes, "run_config": plan.run_config}
    if returncode != 0 or reason:
        marker["failure"] = "; ".join(filter(None, [f"flwr exit code {returncode}" if returncode else "", reason]))
        marker["output_tail"] = tail(output)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / MARKER).write_text(json.dumps(marker, indent=1))
    return marker


def progress_line(index: int, total: int, plan: RunPlan, how: str) -> str:
    """'[i/n] variant seed s: ran in 42 s, final pooled 87.3% (round 5)'."""
    head = f"[{index}/{total}] {plan.variant} seed {plan.seed}:"
    try:
        record = collect_run(str(plan.run_dir))
    except ReportInputError as exc:
        return f"{head} FAILED ({exc})"
    if record["status"] != "ok":
        return f"{head} FAILED after {record.get('wall_seconds', 0.0):.0f} s ({record.get('reason', '')})"
    final = record["final"]
    labels = (("global_acc_pooled", "final pooled"), ("personal_acc_mean", "personalized"))
    result = ", ".join(f"{label} {100 * final[key]:.1f}%" for key, label in labels if finite(final.get(key)))
    seconds = record.get("wall_seconds", record["time_seconds"].get("total", math.nan))
    verb = f"ran in {seconds:.0f} s" if how == "ran" else f"reused (took {seconds:.0f} s)"
    return f"{head} {verb}, {result} (round {record['final_round']})"


def run_all(plans: list[RunPlan], suite: SuiteRun, force: bool, timeout: float) -> None:
    """Run every plan not already finished, through one private SuperLink, printing a line per run."""
    pending = []
    for index, plan in enumerate(plans, 1):
        problem = "--force" if force else reuse_problem(plan)
        if not problem:
            print(progress_line(index, len(plans), plan, "reused"), flush=True)
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
            marker = execute(link, plan, suite, timeout)
            print(progress_line(plans.index(plan) + 1, len(plans), plan, "ran"), flush=True)
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
