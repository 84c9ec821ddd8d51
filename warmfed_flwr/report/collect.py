"""Run directories -> records: status, marker fields, final numbers and the per-round series."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from warmfed_flwr.errors import WarmFedError
from warmfed_flwr.records.results import SYNTHETIC_QUALITY_PREFIX

MARKER = "compare-run.json"
"""What benchmarks/compare.py records next to a run's metrics.json: exit code, wall seconds, command, machine."""
MARKER_FIELDS = ("returncode", "wall_seconds", "failure", "command", "machine", "date", "overrides", "notes")
"""Marker keys copied into a run's record."""


class ReportInputError(WarmFedError):
    """A path given to the report is missing, holds no run directory, or holds an unreadable metrics.json."""


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json (None when absent); raises ReportInputError when it is not strict JSON."""
    path = run_dir / "metrics.json"

    def refuse(constant: str) -> None:
        raise ValueError(f"holds {constant}")

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot be read ({exc.strerror}); fix its permissions") from None
    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise ReportInputError(f"{path}: not strict JSON ({exc}); rerun that run or move its directory away") from None


def read_marker(run_dir: Path) -> dict[str, Any]:
    """What benchmarks/compare.py recorded about the run ({} when it was not run by it)."""
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
        "privacy_audit": metrics.get("privacy_audit", {}),
        "privacy_budget": metrics.get("privacy_budget", {}),
    }


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: it holds a metrics.json or a compare-run.json marker."""
    return (path / "metrics.json").is_file() or (path / MARKER).is_file()


def run_order(run_dir: Path) -> tuple[int, str, str]:
    """Sort key of a folder's run directories: the order benchmarks/compare.py ran them in (its marker's date,
    which follows the suite's variant order), then those without a marker, by name."""
    date = read_marker(run_dir).get("date")
    return (0, str(date), run_dir.name) if date else (1, "", run_dir.name)


def expand(arguments: Sequence[str]) -> list[str]:
    """Run directories named by the arguments, each a run directory or a folder of them (children in the order
    compare ran them, see run_order); paths stay as given (a child is ``<folder>/<name>``). Raises
    ReportInputError naming a bad argument."""
    found: dict[Path, str] = {}
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            what = "not a directory" if path.exists() else "no such directory"
            raise ReportInputError(f"{argument}: {what}; pass a run directory (with metrics.json) or a folder of them")
        if is_run_dir(path):
            found.setdefault(path.resolve(), argument)
            continue
        children = sorted((child for child in path.iterdir() if child.is_dir() and is_run_dir(child)),
                          key=run_order)
        if not children:
            raise ReportInputError(f"{argument}: holds no run directory (one with metrics.json or {MARKER}); "
                                   "pass the folder the runs were written to (their output-dir)")
        for child in children:
            found.setdefault(child.resolve(), str(path / child.name))
    return list(found.values())


def method_label(config: dict[str, Any], run_dir: str) -> str:
    """'warmfed', 'warmfed + dsd' from a run's config (the directory name when the config says nothing)."""
    algorithm = config.get("algorithm")
    if not algorithm:
        return Path(run_dir).name
    method = config.get("personalization.method") or "none"
    return str(algorithm) if method == "none" else f"{algorithm} + {method}"


def finish_date(run_dir: Path) -> str | None:
    """When metrics.json was last written, as an ISO date (None without one)."""
    try:
        stamp = (run_dir / "metrics.json").stat().st_mtime
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def collect_run(run_dir: str) -> dict[str, Any]:
    """One run's record: variant, seed, status (ok / failed / missing, with the reason), marker fields, final
    numbers and its per-round rows. Raises ReportInputError when its metrics.json is unreadable."""
    path = Path(run_dir)
    marker = read_marker(path)
    metrics = load_metrics(path)
    config = (metrics or {}).get("config") or marker.get("run_config") or {}
    record: dict[str, Any] = {
        "variant": marker.get("variant") or method_label(config, run_dir),
        "seed": marker.get("seed", config.get("seed")),
        "run_dir": run_dir,
        **{key: marker[key] for key in MARKER_FIELDS if key in marker},
    }
    record.setdefault("date", finish_date(path))
    reason = unfinished_reason(metrics)
    if marker and (reason or marker.get("returncode", 0) != 0 or marker.get("failure")):
        return {**record, "status": "failed", "reason": marker.get("failure") or reason}
    if reason:
        return {**record, "status": "missing", "reason": f"{reason}, and no {MARKER}: still running, or stopped"}
    return {**record, "status": "ok", **final_numbers(metrics), "rounds": metrics["rounds"]}


def collect(arguments: Sequence[str]) -> list[dict[str, Any]]:
    """The records of every run directory the arguments name, in argument order (see :func:`label_overrides`)."""
    return label_overrides([collect_run(run_dir) for run_dir in expand(arguments)])


def label_overrides(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where runs of one variant were made under different ``--set`` overrides, those with overrides get them in
    their variant name ('WarmFed + DSD [personalization.student-start = personal]'), so a report never pools them."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        kinds.setdefault(record["variant"], set()).add(json.dumps(record.get("overrides") or {}, sort_keys=True))
    for record in records:
        if len(kinds[record["variant"]]) > 1 and record.get("overrides"):
            pairs = ", ".join(f"{key} = {value}" for key, value in sorted(record["overrides"].items()))
            record["variant"] = f"{record['variant']} [{pairs}]"
    return records


def by_variant(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by variant, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["variant"], []).append(record)
    return groups


def ok_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished runs."""
    return [record for record in records if record["status"] == "ok"]


def is_personal(records: list[dict[str, Any]]) -> bool:
    """Whether any finished run evaluated personalized models (then the personal table replaces the global one)."""
    return any(key.startswith("personal_acc_") for record in ok_records(records) for key in record["final"])


def rounds_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run and round: variant, seed, round and every metric of that round."""
    rows = [{"variant": record["variant"], "seed": record["seed"], **row}
            for record in ok_records(records) for row in record["rounds"]]
    return pd.DataFrame(rows, columns=None if rows else ["variant", "seed", "round"])


def finals_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run: variant, seed, its final round's metrics and its total upload per client."""
    rows = [{"variant": record["variant"], "seed": record["seed"], **record["final"],
             "upload_per_client_total": record["upload_per_client_total"]} for record in ok_records(records)]
    return pd.DataFrame(rows, columns=None if rows else ["variant", "seed", "upload_per_client_total"])


def over_seeds(frame: pd.DataFrame, key: str, by: Sequence[str] = ("variant",)) -> pd.DataFrame:
    """``key`` aggregated over seeds per group: mean, population std, min and max (groups in first-seen order);
    rows where ``key`` is missing are left out."""
    if key not in frame:
        return pd.DataFrame(columns=[*by, "mean", "std", "min", "max"])
    values = frame[[*by, key]].dropna(subset=[key])
    grouped = values.groupby(list(by), sort=False)[key]
    stats = grouped.agg(["mean", "min", "max"]).join(grouped.std(ddof=0).rename("std").fillna(0.0))
    return stats.reset_index()
