"""Run records: resolved config, per-round metrics (JSON, CSV), markdown summary and plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmfed_flwr.records.progress import Heartbeat
from warmfed_flwr.records.tracking import Tracker, open_tracker

logger = logging.getLogger(__name__)

SYNTHETIC_QUALITY_PREFIX = "synthetic_quality_"
"""Round-0 metric per client: a classifier trained on its synthetic images, accuracy on its real test split."""
PRIVACY_AUDIT_PREFIX = "audit_"
"""Fit metrics a client reports from its privacy audit (warmfed_flwr/trust/privacy_audit.py), kept per client."""
AUDIT_COLUMNS = {"pixel closer-share": "audit_pixel_closer_share",
                 "pixel near-copy": "audit_pixel_near_copy_share",
                 "feature closer-share": "audit_feature_closer_share",
                 "feature near-copy": "audit_feature_near_copy_share"}


def strict_json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and NaN or infinite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{100 * value:.2f}"
    return str(value)


@dataclass
class RunRecorder:
    """Collects metrics of one run and writes them under ``directory``."""

    directory: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    privacy_audit: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each client's privacy-audit metrics, by client name."""
    privacy_budget: dict[str, Any] = field(default_factory=dict)
    """A DP run's (epsilon, delta) and how it was accounted (warmfed_flwr/trust/dp.py); empty without DP."""
    started: float = field(default_factory=time.perf_counter)
    tracker: Tracker | None = field(init=False, default=None)
    """Where tracking.backend sends the rounds and stage times (None: nowhere)."""

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.directory / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        self.tracker = open_tracker(self.config.get("tracking.backend", "none"), self.directory, self.config)

    def add_time(self, stage: str, seconds: float) -> None:
        """Account ``seconds`` of wall-clock to ``stage``."""
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timed(self, stage: str, label: str) -> Iterator[None]:
        """Account the wall-clock of the ``with`` block to ``stage``, logging ``label`` every 30 s while it lasts."""
        beat = Heartbeat()
        beat.start(label)
        try:
            yield
        finally:
            self.add_time(stage, beat.stop())

    def event(self, kind: str, **details: Any) -> None:
        """Record a notable event (a refused upload, a failed client)."""
        logger.warning("%s: %s", kind, details)
        self.events.append({"kind": kind, **details})

    def record_round(self, server_round: int, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into the row of ``server_round`` and rewrite the files."""
        row = next((r for r in self.rounds if r["round"] == server_round), None)
        if row is None:
            row = {"round": server_round}
            self.rounds.append(row)
            self.rounds.sort(key=lambda r: r["round"])
        row.update(metrics)
        self.flush()

    def record_privacy_audit(self, client: str, metrics: dict[str, float]) -> None:
        """Keep ``client``'s privacy-audit metrics and rewrite the files."""
        self.privacy_audit[client] = dict(metrics)
        self.flush()

    def history(self) -> dict[str, Any]:
        """What a checkpoint keeps of this record: rounds, events, privacy audits, seconds per stage and in total."""
        return {"rounds": self.rounds, "events": self.events, "stage_seconds": self.stage_seconds,
                "privacy_audit": self.privacy_audit, "elapsed_seconds": time.perf_counter() - self.started}

    def restore(self, history: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`history`, dropping whatever was recorded after it."""
        self.rounds = [dict(row) for row in history["rounds"]]
        self.events = [dict(event) for event in history["events"]]
        self.stage_seconds = dict(history["stage_seconds"])
        self.privacy_audit = {client: dict(m) for client, m in history.get("privacy_audit", {}).items()}
        self.started = time.perf_counter() - float(history["elapsed_seconds"])
        self.flush()

    def flush(self) -> None:
        """Write metrics.json and metrics.csv, and send new round values to the tracker."""
        total = time.perf_counter() - self.started
        accounted = sum(self.stage_seconds.values())
        timing = {**self.stage_seconds, "other": max(total - accounted, 0.0), "total": total}
        doc = {"config": self.config, "rounds": self.rounds, "time_seconds": timing, "events": self.events,
               **({"privacy_audit": self.privacy_audit} if self.privacy_audit else {}),
               **({"privacy_budget": self.privacy_budget} if self.privacy_budget else {})}
        _atomic_write(self.directory / "metrics.json", json.dumps(strict_json(doc), indent=1, allow_nan=False))
        columns = sorted({k for r in self.rounds for k in r}, key=lambda k: (k != "round", k))
        tmp = self.directory / "metrics.csv.tmp"
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rounds)
        os.replace(tmp, self.directory / "metrics.csv")
        if self.tracker is not None:
            self.tracker.send_rounds(self.rounds)

    def finish(self) -> str:
        """Write summary.md and accuracy.png, close the tracker with metrics.json's stage times; return the summary
        text."""
        self.flush()
        if self.tracker is not None:
            timing = json.loads((self.directory / "metrics.json").read_text())["time_seconds"]
            self.tracker.finish(self.rounds, timing)
            self.tracker = None
        summary = summarize(self.rounds, self.config, self.stage_seconds, self.events, self.privacy_audit,
                            self.privacy_budget)
        _atomic_write(self.directory / "summary.md", summary)
        plot_accuracy(self.rounds, self.directory / "accuracy.png")
        return summary


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: client-2 before client-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def run_title(config: dict[str, Any]) -> str:
    """What ran: the algorithm (with its personalization), the experiment file and the seed."""
    method = str(config.get("algorithm"))
    if config.get("personalization.method", "none") != "none":
        method += f" + {config['personalization.method']}"
    return f"{method} (experiment {config.get('experiment')}, seed {config.get('seed')})"


def _series(rounds: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["round"], r[key]) for r in rounds if isinstance(r.get(key), (int, float))]


def summarize(rounds: list[dict[str, Any]], config: dict[str, Any], stage_seconds: dict[str, float],
              events: Sequence[dict[str, Any]] = (), privacy_audit: Mapping[str, Mapping[str, float]] | None = None,
              privacy_budget: Mapping[str, Any] | None = None) -> str:
    """A markdown summary: pooled and per-domain global accuracy, personalized accuracy, the clients' privacy
    audits and DP budget, bytes, time, and the run's events (refused, failed or unsampled clients, domains left out
    of the synthetic set)."""
    lines = [f"# {run_title(config)}", ""]
    evaluated = [r for r in rounds if "global_acc_pooled" in r]
    if evaluated:
        last, best = evaluated[-1], max(evaluated, key=lambda r: r["global_acc_pooled"])
        domains = sorted((k.removeprefix("global_acc_") for k in last
                          if k.startswith("global_acc_") and k != "global_acc_pooled"), key=natural_key)
        lines += ["## Global model accuracy (%)", "", "| round | pooled | " + " | ".join(domains) + " |",
                  "|---" * (len(domains) + 2) + "|"]
        for row in evaluated:
            cells = [_fmt(row.get(f"global_acc_{d}", float("nan"))) for d in domains]
            lines.append(f"| {row['round']} | {_fmt(row['global_acc_pooled'])} | " + " | ".join(cells) + " |")
        lines += ["", f"Last (round {last['round']}): pooled {_fmt(last['global_acc_pooled'])}; "
                  f"best (round {best['round']}): {_fmt(best['global_acc_pooled'])}.", ""]
    quality = {k.removeprefix(SYNTHETIC_QUALITY_PREFIX): v for r in rounds if r.get("round") == 0
               for k, v in r.items() if k.startswith(SYNTHETIC_QUALITY_PREFIX)}
    if quality:
        names = sorted(quality, key=natural_key)
        mean = sum(quality.values()) / len(names)
        lines += ["## Synthetic data quality per client (%)", "",
                  "A classifier trained on one client's synthetic images only, tested on its real test split.", "",
                  "| " + " | ".join(names) + " | mean |", "|---" * (len(names) + 1) + "|",
                  "| " + " | ".join(_fmt(quality[n]) for n in names) + f" | {_fmt(mean)} |", ""]
    personal = [r for r in rounds if "personal_acc_mean" in r]
    if personal:
        last = personal[-1]
        best = max(personal, key=lambda r: r["personal_acc_mean"])
        lines += ["## Personalized models (every client, own test split)", "",
                  f"Last (round {last['round']}): mean {_fmt(last['personal_acc_mean'])} "
                  f"+- {_fmt(last.get('personal_acc_std', float('nan')))}; best (round {best['round']}): "
                  f"{_fmt(best['personal_acc_mean'])}.", ""]
    lines += privacy_audit_section(privacy_audit or {})
    lines += privacy_budget_section(privacy_budget or {})
    up = sum(r.get("bytes_up", 0) for r in rounds)
    down = sum(r.get("bytes_down", 0) for r in rounds)
    lines += ["## Communication and time", "", f"Bytes up: {up:,}; bytes down: {down:,}.", ""]
    if stage_seconds:
        lines.append("| stage | seconds |")
        lines.append("|---|---|")
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in stage_seconds.items()]
    if events:
        lines += ["", "## Events", ""]
        lines += [f"- round {event.get('round', '-')}, {event.get('kind')}"
                  + "".join(f"; {key}: {value}" for key, value in event.items() if key not in ("round", "kind"))
                  for event in events]
    return "\n".join(lines) + "\n"


def privacy_audit_section(audits: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The "Privacy audit" section: per client, the shares of its audited synthetic images closer to a train image
    than to a test image and flagged as near-copies, in pixel and feature space; none without audits."""
    if not audits:
        return []
    lines = ["## Privacy audit", "",
             "Synthetic images made from each client's own upload, measured on the client against its private train "
             "and test images (shares in %): a closer-share of 50 (0.5) = no sign of memorisation, 100 = copies; "
             "near-copy is about 5 without memorisation.", "",
             "| client | " + " | ".join(AUDIT_COLUMNS) + " |", "|---" * (len(AUDIT_COLUMNS) + 1) + "|"]
    for client in sorted(audits, key=natural_key):
        cells = [_fmt(float(audits[client].get(key, float("nan")))) for key in AUDIT_COLUMNS.values()]
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def privacy_budget_section(budget: Mapping[str, Any]) -> list[str]:
    """The "Privacy budget" section of a DP run: its (epsilon, delta) and how they were accounted; none without DP."""
    if not budget:
        return []
    return ["## Privacy budget", "",
            f"Each client's uploads over the whole run are (epsilon = {budget['epsilon']:.3g}, delta = "
            f"{budget['delta']:g})-differentially private with respect to that client's whole dataset: noise "
            f"multiplier {budget['noise_multiplier']:.4g} on {budget['releases_per_client']} clipped upload parts; "
            f"{budget['accountant']}. What is and is not protected: docs/privacy.md.", ""]


def plot_accuracy(rounds: list[dict[str, Any]], path: Path) -> None:
    """Accuracy per round: global pooled, per domain, personalized mean, DSD teacher shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rounds for k in r if k.startswith(("global_acc_", "personal_acc_mean", "dsd_share_"))})
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = _series(rounds, key)
        if points:
            style = "-o" if key in ("global_acc_pooled", "personal_acc_mean") else "--"
            ax.plot(*zip(*points, strict=True), style, label=key, markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy / share")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
