"""Paired differences between two methods over their shared seeds: per-seed difference, mean and 95 % t interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from warmfed_flwr.report.collect import by_variant, finite, is_personal, ok_records

CONFIDENCE = 0.95
WITHIN_NOISE = "within noise"


@dataclass(frozen=True)
class Pair:
    """Method ``first`` at ``first_metric`` minus method ``second`` at ``second_metric``, on the same seeds."""

    first: str
    second: str
    first_metric: str = "final"
    second_metric: str = "final"


METRIC_LABELS = {"final": "final", "one_shot": "one-shot (r0)", "round1": "after round 1"}
"""What each pair metric reads from a record: the final round's headline accuracy, round 0 or round 1 pooled."""
GLOBAL_PAIRS = (
    Pair("WarmFed", "Warm start + FedAvg"),
    Pair("WarmFed", "FGL"),
    Pair("WarmFed", "FGL (descriptive prompts)"),
    Pair("WarmFed", "FedAvg (5 rounds)"),
    Pair("WarmFed", "FedAvg (5 rounds)", "one_shot", "round1"),
)
"""The comparisons a global report makes whenever both methods are in it (benchmarks/suites.py names)."""
PERSONAL_PAIRS = tuple(Pair("WarmFed + DSD", peer) for peer in (
    "WarmFed + pFedSD", "WarmFed + Ditto", "WarmFed + FedBN", "FedAvg + fine-tuning", "Local only"))
"""The comparisons a personalized report makes whenever both methods are in it."""
HEADLINES = {"personal_acc_mean": "final personalized mean", "global_acc_pooled": "final pooled accuracy"}
"""The final-round key a report compares, and its name in the table's caption."""


def headline_key(records: list[dict[str, Any]]) -> str:
    """The final-round key compared: personalized mean for personalized runs, else pooled global accuracy."""
    return "personal_acc_mean" if is_personal(records) else "global_acc_pooled"


def metric_value(record: dict[str, Any], metric: str, key: str) -> Any:
    """One finished run's value of a pair metric (None when the run lacks it)."""
    if metric == "one_shot":
        return record["one_shot_pooled"]
    if metric == "round1":
        return record["round1_pooled"]
    return record["final"].get(key)


def per_seed(records: list[dict[str, Any]], metric: str, key: str) -> dict[Any, float]:
    """A method's value per seed (the mean where two run directories hold one seed), finite values only."""
    values: dict[Any, list[float]] = {}
    for record in records:
        value = metric_value(record, metric, key)
        if finite(value):
            values.setdefault(record["seed"], []).append(float(value))
    return {seed: statistics.fmean(found) for seed, found in values.items()}


def t_interval(differences: Sequence[float]) -> tuple[float, float] | None:
    """The 95 % t interval of the mean of ``differences`` over seeds (None for fewer than two seeds)."""
    if len(differences) < 2:
        return None
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(
        len(differences))
    return mean - half, mean + half


def verdict(pair: Pair, interval: tuple[float, float] | None) -> str:
    """'within noise' where the interval holds zero, else which method is ahead; 'one seed' without interval."""
    if interval is None:
        return "one seed: no interval"
    low, high = interval
    if low <= 0 <= high:
        return WITHIN_NOISE
    return f"{pair.first} higher" if low > 0 else f"{pair.second} higher"


def paired_difference(pair: Pair, groups: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any] | None:
    """``pair`` over the seeds both methods finished: per-seed differences, mean, interval and verdict (None when
    no seed has both values)."""
    first = per_seed(groups.get(pair.first, []), pair.first_metric, key)
    second = per_seed(groups.get(pair.second, []), pair.second_metric, key)
    seeds = sorted(set(first) & set(second), key=str)
    if not seeds:
        return None
    differences = [first[seed] - second[seed] for seed in seeds]
    interval = t_interval(differences)
    return {"first": pair.first, "second": pair.second, "first_metric": pair.first_metric,
            "second_metric": pair.second_metric, "key": key, "seeds": seeds, "differences": differences,
            "mean": statistics.fmean(differences), "interval": list(interval) if interval else None,
            "verdict": verdict(pair, interval)}


def report_pairs(records: list[dict[str, Any]], asked: Sequence[Sequence[str]] = ()) -> list[Pair]:
    """The default pairs of the report's kind whose methods are both present, then the ``asked`` ones."""
    present = set(by_variant(records))
    defaults = PERSONAL_PAIRS if is_personal(records) else GLOBAL_PAIRS
    pairs = [pair for pair in defaults if {pair.first, pair.second} <= present]
    return pairs + [pair for first, second in asked if (pair := Pair(first, second)) not in pairs]


def paired_differences(records: list[dict[str, Any]], pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    """Every pair's paired difference over the finished runs (pairs without a shared seed are left out)."""
    groups, key = by_variant(ok_records(records)), headline_key(records)
    return [found for pair in pairs if (found := paired_difference(pair, groups, key)) is not None]


def points(value: float) -> str:
    """A difference of fractions in signed percentage points, one decimal."""
    return f"{100 * value:+.1f}"


def comparison_label(row: dict[str, Any]) -> str:
    """'WarmFed − FGL', naming the metrics where they are not the final ones."""
    def side(name: str, metric: str) -> str:
        return name if metric == "final" else f"{name} {METRIC_LABELS[metric]}"

    return f"{side(row['first'], row['first_metric'])} − {side(row['second'], row['second_metric'])}"


def paired_table(rows: list[dict[str, Any]]) -> list[str]:
    """The paired-difference section of the markdown ([] without rows)."""
    if not rows:
        return []
    header = ["comparison", "seeds", "difference per seed", "mean", f"{CONFIDENCE:.0%} interval", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        interval = f"[{points(row['interval'][0])}, {points(row['interval'][1])}]" if row["interval"] else "-"
        cells = [comparison_label(row), ", ".join(map(str, row["seeds"])),
                 ", ".join(points(d) for d in row["differences"]), points(row["mean"]), interval, row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return ["", f"Paired differences ({HEADLINES[rows[0]['key']]} unless named, in percentage points; each seed of "
            f"one method minus the same seed of the other, their mean and its {CONFIDENCE:.0%} t interval over seeds; "
            f"'{WITHIN_NOISE}' where the interval holds 0):", "", *lines]
