"""The fault matrix's cases and how each is judged from its run directory (benchmarks/fault_matrix.py runs them).

A case passes on outcomes only: the run finished with every round recorded and every client evaluated, it lost
exactly the faulty client's contribution to the faulty round (a domain left out, an update dropped or clipped, each
named with its recorded reason), and its final global accuracy is at most ``max_drop`` below the no-fault control's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmfed_flwr.data.cache_files import UNREADABLE, read_npz
from warmfed_flwr.records.checkpoint import CheckpointStore, checkpoint_dir

PROCESS_FAULTS = ("raise", "hang", "exit")
REFUSED_FAULTS = ("nan", "wrong-shape", "extra-key", "oversize", "absurd-examples")
UPDATE_ATTACKS = ("scale", "sign-flip", "lie-examples")
"""Attacks on a later round's update that pass validation; each also runs once with the robust settings off."""
ROUND0_ATTACKS = ("swap-rows", "huge-adapter")
CORRUPT_CACHE = "corrupt-cache"
KINDS = (*PROCESS_FAULTS, *REFUSED_FAULTS, *UPDATE_ATTACKS, *ROUND0_ATTACKS, CORRUPT_CACHE)
DOMAINS = ("mnist", "digits", "fonts")
FAULTY = 1
"""The partition id that misbehaves (digits)."""
LATER_ROUND = 1
REASONS = {"scale": "train.clip-norm", "sign-flip": "train.clip-norm", "swap-rows": "match the server's prompts",
           "huge-adapter": "synthesis.max-adapter-abs"}
"""What the recorded reason of a new attack's loss must say."""
Loss = tuple[Any, ...]
"""('left out', domain, how) for round 0, ('dropped', client, round, how) or ('clipped', client, round) later,
('model kept', round)."""


@dataclass(frozen=True)
class Case:
    """One fault kind in one round ('none' is the control; ``plain``: robust aggregation settings off)."""

    kind: str
    round: int = -1
    plain: bool = False

    @property
    def name(self) -> str:
        """'exit in round 0', 'scale in round 1, plain FedAvg', 'corrupt-cache' or 'no fault'."""
        if self.kind in ("none", CORRUPT_CACHE):
            return "no fault" if self.kind == "none" else CORRUPT_CACHE
        return f"{self.kind} in round {self.round}" + (", plain FedAvg" if self.plain else "")

    @property
    def injected(self) -> str:
        """The faults.kind this case's run configures."""
        return "none" if self.kind == CORRUPT_CACHE else self.kind

    def expected(self) -> set[Loss]:
        """What this fault should cost: the faulty client's contribution to the faulty round, nothing else."""
        if self.kind in ("none", CORRUPT_CACHE, "lie-examples"):
            return set()
        if self.kind in ("scale", "sign-flip"):
            return {("clipped", DOMAINS[FAULTY], self.round)}
        how = "failed" if self.kind in PROCESS_FAULTS else "refused"
        if self.round == 0:
            return {("left out", DOMAINS[FAULTY], how)}
        return {("dropped", DOMAINS[FAULTY], self.round, how)}


def plan_cases(only: list[str] | tuple[str, ...]) -> list[Case]:
    """The control, then every kind in the rounds it applies to (limited to ``only`` when given; the control always
    runs: every case is measured against it)."""
    cases = [Case("none")]
    for kind in KINDS:
        if only and kind not in only:
            continue
        if kind == CORRUPT_CACHE:
            cases.append(Case(kind))
        elif kind in UPDATE_ATTACKS:
            cases.append(Case(kind, LATER_ROUND))
        elif kind in ROUND0_ATTACKS:
            cases.append(Case(kind, 0))
        else:
            cases += [Case(kind, 0), Case(kind, LATER_ROUND)]
    return cases


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json, or {} when it is missing or unreadable."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def final_accuracy(metrics: dict[str, Any]) -> float | None:
    """The last recorded round's pooled global accuracy."""
    rows = [row for row in metrics.get("rounds", []) if "global_acc_pooled" in row]
    return float(rows[-1]["global_acc_pooled"]) if rows else None


def observed_losses(metrics: dict[str, Any]) -> tuple[set[Loss], dict[Loss, str]]:
    """What the run lost according to its events, with each loss's recorded reason."""
    losses: dict[Loss, str] = {}
    for event in metrics.get("events", []):
        kind, round_ = event["kind"], event.get("round")
        if kind == "domain_left_out":
            how = "refused" if event["reason"].startswith("upload refused") else "failed"
            losses[("left out", event["domain"], how)] = event["reason"]
        elif kind in ("client_failed", "upload_refused") and round_ != 0:
            how = "failed" if kind == "client_failed" else "refused"
            for client in [event["client"]] if "client" in event else event.get("clients") or ["?"]:
                losses[("dropped", client, round_, how)] = event["reason"]
        elif kind == "update_clipped":
            losses[("clipped", event["client"], round_)] = (f"update norm {event['norm']:.3g} over train.clip-norm = "
                                                            f"{event['clip_norm']:g}, scaled down to it")
        elif kind == "round_skipped":
            losses[("model kept", round_)] = event["reason"]
    return set(losses), losses


def describe(loss: Loss, reason: str) -> str:
    """A loss in words, with a shortened reason."""
    short = reason if len(reason) <= 160 else f"{reason[:60]} ... {reason[-95:]}"
    if loss[0] == "left out":
        return f"domain '{loss[1]}' left out of the synthetic set ({short})"
    if loss[0] == "dropped":
        return f"update of '{loss[1]}' dropped in round {loss[2]} ({loss[3]}: {short})"
    if loss[0] == "clipped":
        return f"update of '{loss[1]}' clipped in round {loss[2]} ({short})"
    return f"round {loss[1]} kept the previous global model ({short})"


def broken_promises(metrics: dict[str, Any], rounds: int) -> list[str]:
    """What the design promises to keep that the run did not: every round recorded, every client evaluated."""
    rows = {row["round"]: row for row in metrics.get("rounds", [])}
    problems = []
    missing = [r for r in range(rounds + 1) if "global_acc_pooled" not in rows.get(r, {})]
    if missing:
        problems.append(f"rounds {missing} not recorded")
    for r, row in sorted(rows.items()):
        absent = [d for d in DOMAINS if f"global_acc_{d}" not in row]
        if absent or row.get("clients_eval_failed"):
            problems.append(f"round {r}: {', '.join(absent) or 'a client'} not evaluated")
    return problems


def accuracy_note(metrics: dict[str, Any], control: float | None) -> str:
    """'final acc 0.512 (control 0.530)' and, for a mean over clients, the largest client share."""
    accuracy = final_accuracy(metrics)
    note = "final acc " + ("none" if accuracy is None else f"{accuracy:.3f}")
    note += f" (control {control:.3f})" if control is not None else ""
    shares = [row["weight_share_max"] for row in metrics.get("rounds", []) if "weight_share_max" in row]
    return note + (f", largest client share {shares[-1]:.3f}" if shares else "")


def judge(case: Case, finished: bool, run_dir: Path, rounds: int, control: float | None, max_drop: float,
          other_problems: list[str]) -> tuple[bool, str]:
    """Whether the case passed, and its report (what the run finished, lost and kept); ``other_problems`` (e.g. a
    cache file not rebuilt) fail it too."""
    metrics = read_metrics(run_dir)
    seen, reasons = observed_losses(metrics)
    expected = case.expected()
    lost = "; ".join(describe(loss, reasons[loss]) for loss in sorted(seen, key=str)) or "nothing"
    problems = (broken_promises(metrics, rounds) if metrics else ["no metrics.json"]) + other_problems
    problems += [f"expected to lose {describe(loss, 'not recorded')}" for loss in sorted(expected - seen, key=str)]
    problems += [f"the reason does not say '{REASONS[case.kind]}'" for loss in expected & seen
                 if case.kind in REASONS and REASONS[case.kind] not in reasons[loss]]
    accuracy = final_accuracy(metrics)
    if control is None or accuracy is None:
        problems.append("no final accuracy of this run or the control to compare")
    elif accuracy < control - max_drop:
        problems.append(f"final accuracy {accuracy:.3f} is more than {max_drop:.2f} below the control's {control:.3f}")
    kept = ("kept: every round recorded, every client evaluated in every round" if not problems
            else "PROBLEMS: " + "; ".join(problems))
    status = f"finished (rounds 0-{rounds})" if finished else "NOT finished"
    report = f"{status}; lost: {lost}; {accuracy_note(metrics, control)}; {kept}"
    return finished and seen == expected and not problems, report


def plain_outcome(finished: bool, run_dir: Path, control: float | None) -> str:
    """The robust-settings-off run of an update attack, recorded whatever it is."""
    metrics = read_metrics(run_dir)
    seen, reasons = observed_losses(metrics)
    lost = "; ".join(describe(loss, reasons[loss]) for loss in sorted(seen, key=str)) or "nothing"
    return (f"plain FedAvg (train.aggregation mean, example-weighting examples, no clip): "
            f"{'finished' if finished else 'NOT finished'}; lost: {lost}; {accuracy_note(metrics, control)}")


def synthetic_cache_file(control_run: Path, cache_dir: Path, client: str) -> Path:
    """The synthetic-set cache file that ``control_run`` made (or reused) from ``client``'s upload, named by its
    newest checkpoint."""
    state = CheckpointStore(checkpoint_dir(control_run)).load_newest().strategy_state
    keys = dict(state["synthesis"])
    return cache_dir / "synthetic" / f"{keys[client]}.npz"


def truncate(path: Path) -> int:
    """Cut the file at ``path`` to half its size, as a crash mid-write on a filesystem without atomic rename would;
    its former size."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    return size


def rebuilt_note(path: Path, truncated_size: int) -> str | None:
    """None when the cache file at ``path`` is whole again (readable, images and labels), else what is wrong."""
    try:
        arrays = read_npz(path)
    except UNREADABLE as exc:
        return f"{path.name} is still unreadable ({type(exc).__name__}) after the run"
    if len(arrays.get("images", [])) == 0 or len(arrays["images"]) != len(arrays.get("labels", [])):
        return f"{path.name} holds no whole synthetic set after the run"
    if path.stat().st_size <= truncated_size:
        return f"{path.name} kept its truncated size"
    return None
