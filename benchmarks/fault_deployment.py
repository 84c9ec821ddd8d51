"""The fault matrix's deployment-engine cases: real SuperLink and SuperNode processes, one SuperLink per case, the
matrix's WarmFed config, judged against the matrix's (simulation) no-fault control.

- ``killed-supernode``: three SuperNodes; the one running client 1 (digits) is SIGKILLed once round 0 is
  evaluated. Passes when the run finishes every round, an event names the lost client with its reason, the other
  two are evaluated in every round and nothing of theirs is lost, and their mean final accuracy is at most
  ``max_drop`` below the control's on the same two clients.
- ``spoofed-name``: TLS and SuperNode authentication with four registered SuperNodes; the first one registered and
  started runs client 0's partition, so it claims the name 'mnist', which train.identity-file binds to the second.
  Its prompts carry its own domain phrase, so its upload is not byte-identical to the real mnist node's, as a real
  spoofer's would not be (``SPOOFER_NODE_CONFIG``).
  Passes when the spoofer's uploads (round 0 and later) and evaluations are refused, each refusal naming its node
  and the bound node, nothing else is lost, every client is evaluated in every round by its own node, and the final
  pooled accuracy is at most ``max_drop`` below the control's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.fault_cases import DOMAINS, FAULTY, read_metrics
from benchmarks.harness import (
    ROOT,
    Processes,
    flwr_run_args,
    round_evaluated,
    run_statuses,
    start_superlink,
    start_supernode,
)
from benchmarks.node_auth import start_authenticated_deployment, wait_until_count_online

KILLED = "killed-supernode"
SPOOFED = "spoofed-name"
DEPLOYMENT_KINDS = (KILLED, SPOOFED)
CASE_NAMES = {KILLED: "killed SuperNode", SPOOFED: "spoofed name"}
SPOOFER_NODE_CONFIG = 'domain-phrase="a forged mnist"'
LOSS_EVENTS = ("client_failed", "clients_missing", "upload_refused", "eval_refused", "domain_left_out",
               "round_skipped", "update_clipped")


def named_clients(event: dict[str, Any]) -> list[str]:
    """The clients (or domain) an event names."""
    if "client" in event:
        return [event["client"]]
    return list(event.get("clients") or []) + ([event["domain"]] if "domain" in event else [])


def loss_events(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The events that record a loss (a failed, missing or refused client, a left-out domain, ...)."""
    return [e for e in metrics.get("events", []) if e["kind"] in LOSS_EVENTS]


def unrecorded(metrics: dict[str, Any], rounds: int, domains: list[str]) -> list[str]:
    """Rounds 0..``rounds`` without a pooled accuracy, and recorded rounds where one of ``domains`` went unevaluated."""
    rows = {row["round"]: row for row in metrics.get("rounds", [])}
    problems = [f"round {r} not recorded" for r in range(rounds + 1) if "global_acc_pooled" not in rows.get(r, {})]
    return problems + [f"round {r}: '{d}' not evaluated" for r in sorted(rows) for d in domains
                       if f"global_acc_{d}" not in rows[r]]


def latest_status(procs: Processes) -> str:
    """The status of the newest run the SuperLink lists ('' when none, or when the Control API did not answer)."""
    try:
        statuses = run_statuses(procs)
    except (subprocess.SubprocessError, ValueError, KeyError):
        return ""
    return statuses[-1] if statuses else ""


def launch(procs: Processes, config: dict[str, Any], timeout: float, kill: subprocess.Popen | None) -> tuple[str, str]:
    """Submit the run to ``procs``' SuperLink and wait until the SuperLink lists it as finished; SIGKILL ``kill``'s
    process group once round 0 is evaluated. Returns the run's status and the last lines of its log.

    The end of `flwr run --stream` says nothing: its log stream also ends when the SuperLink's Control API fails a
    request (measured on Flower 1.42 with 4 SuperNodes: 'database is locked' in the SQLite state), while the run
    goes on. So the stream only records the log, and the run's status comes from `flwr ls`."""
    log_path = procs.home / "run.log"
    metrics = Path(config["output-dir"]) / config["run-name"] / "metrics.json"
    status = ""
    with log_path.open("w") as log:
        stream = subprocess.Popen(flwr_run_args(config, None), env=procs.env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and not status.startswith("finished"):
                time.sleep(2.0)
                if kill is not None and kill.poll() is None and round_evaluated(metrics, 0):
                    os.killpg(kill.pid, signal.SIGKILL)
                status = latest_status(procs)
                if not status and stream.poll() not in (None, 0):
                    break  # the submission itself failed
        finally:
            if stream.poll() is None:
                stream.kill()
            stream.wait()
    tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])[-400:]
    return status or f"not finished after {timeout:.0f} s", tail


def run_killed(config: dict[str, Any], home: Path, timeout: float) -> tuple[str, str]:
    """Three insecure SuperNodes; the faulty client's is killed after round 0."""
    procs = Processes(home)
    try:
        port = start_superlink(procs, simulation=False)
        nodes = [start_supernode(procs, port, partition, len(DOMAINS)) for partition in range(len(DOMAINS))]
        wait_until_count_online(procs, len(DOMAINS))
        return launch(procs, config, timeout, kill=nodes[FAULTY])
    finally:
        procs.stop()


def run_spoofed(config: dict[str, Any], home: Path, timeout: float) -> tuple[tuple[str, str], str, str]:
    """A spoofer (client 0's partition, registered first) and the three clients' own SuperNodes, under an identity
    file binding each name to its own node. ((status, output), spoofer's node id, the node bound to 'mnist')."""
    procs = Processes(home)
    try:
        _, node_ids = start_authenticated_deployment(procs, [0, *range(len(DOMAINS))], len(DOMAINS),
                                                     node_configs={0: SPOOFER_NODE_CONFIG})
        spoofer, own = node_ids[0], node_ids[1:]
        identities = home / "identities.yaml"
        identities.write_text("".join(f"{name}: {node}\n" for name, node in zip(DOMAINS, own, strict=True)))
        outcome = launch(procs, {**config, "train.identity-file": str(identities)}, timeout, kill=None)
        return outcome, spoofer, own[0]
    finally:
        procs.stop()


def last_accuracies(metrics: dict[str, Any], domains: list[str]) -> float | None:
    """Mean over ``domains`` of the last round's global accuracy on each."""
    rows = [row for row in metrics.get("rounds", []) if all(f"global_acc_{d}" in row for d in domains)]
    return sum(rows[-1][f"global_acc_{d}"] for d in domains) / len(domains) if rows else None


def judge_killed(metrics: dict[str, Any], rounds: int, control: dict[str, Any], max_drop: float) -> list[str]:
    """What the killed-SuperNode run did wrong (empty: passed)."""
    lost, survivors = DOMAINS[FAULTY], [d for i, d in enumerate(DOMAINS) if i != FAULTY]
    problems = unrecorded(metrics, rounds, survivors)
    first = next((row for row in metrics.get("rounds", []) if row["round"] == 0), {})
    if f"global_acc_{lost}" not in first:
        problems.append(f"'{lost}' not evaluated in round 0, before the kill")
    events = loss_events(metrics)
    if not any(lost in named_clients(e) and e.get("reason") for e in events):
        problems.append(f"no event names '{lost}' with a reason")
    problems += [f"{e['kind']} in round {e.get('round')} names {d}" for e in events for d in survivors
                 if d in named_clients(e)]
    return problems + accuracy_problems(metrics, control, survivors, max_drop)


def judge_spoofed(metrics: dict[str, Any], rounds: int, control: dict[str, Any], max_drop: float, spoofer: str,
                  bound: str) -> list[str]:
    """What the spoofed-name run did wrong (empty: passed)."""
    problems = unrecorded(metrics, rounds, list(DOMAINS))
    events = loss_events(metrics)
    refusals = [e for e in events if e.get("client") == f"node {spoofer}" and e.get("claimed") == DOMAINS[0]
                and f"binds to node {bound}" in e.get("reason", "")]
    uploads = {e["round"] for e in refusals if e["kind"] == "upload_refused"}
    if 0 not in uploads or not uploads - {0}:
        problems.append(f"the spoofer's uploads were refused in rounds {sorted(uploads)}, not in round 0 and later")
    if not any(e["kind"] == "eval_refused" for e in refusals):
        problems.append("no evaluation of the spoofer refused")
    problems += [f"{e['kind']} in round {e.get('round')}: {e.get('reason', '')[:120]}" for e in events
                 if e not in refusals]
    return problems + accuracy_problems(metrics, control, list(DOMAINS), max_drop)


def accuracy_problems(metrics: dict[str, Any], control: dict[str, Any], domains: list[str],
                      max_drop: float) -> list[str]:
    """A final accuracy over ``domains`` more than ``max_drop`` below the control's, or none to compare."""
    accuracy, reference = last_accuracies(metrics, domains), last_accuracies(control, domains)
    if accuracy is None or reference is None:
        return ["no final accuracy of this run or the control to compare"]
    if accuracy < reference - max_drop:
        return [f"final accuracy {accuracy:.3f} is more than {max_drop:.2f} below the control's {reference:.3f}"]
    return []


def describe(kind: str, metrics: dict[str, Any], control: dict[str, Any]) -> str:
    """What the run lost, and its final accuracy beside the control's on the clients it compares."""
    events = loss_events(metrics)
    shown = sorted({f"{e['kind']} {', '.join(named_clients(e))} in round {e.get('round')}" for e in events})
    domains = [d for i, d in enumerate(DOMAINS) if i != FAULTY] if kind == KILLED else list(DOMAINS)
    accuracy, reference = last_accuracies(metrics, domains), last_accuracies(control, domains)
    first = next((e.get("reason", "") for e in events), "")
    return (f"lost: {'; '.join(shown) or 'nothing'}" + (f" (first reason: {first[:160]})" if first else "")
            + f"; final acc on {', '.join(domains)} "
            + ("none" if accuracy is None else f"{accuracy:.3f}")
            + ("" if reference is None else f" (control {reference:.3f})"))


def deployment_case(kind: str, config: dict[str, Any], home: Path, rounds: int, control_run: Path,
                    max_drop: float, timeout: float) -> tuple[bool, str]:
    """Run one deployment case with ``config`` (the matrix's control config); whether it passed, and its report."""
    home.mkdir(parents=True, exist_ok=True)
    run_dir = Path(config["output-dir"]) / config["run-name"]
    spoofer = bound = ""
    try:
        if kind == KILLED:
            status, tail = run_killed(config, home, timeout)
        else:
            (status, tail), spoofer, bound = run_spoofed(config, home, timeout)
    except (TimeoutError, subprocess.SubprocessError, OSError) as exc:  # the deployment did not start
        status, tail = "not started", f"{type(exc).__name__}: {exc}"
    metrics, control = read_metrics(run_dir), read_metrics(control_run)
    finished = status == "finished:completed" and (run_dir / "summary.md").exists()
    problems = [] if finished else [f"run status {status}; last output: {tail}"]
    if kind == KILLED:
        problems += judge_killed(metrics, rounds, control, max_drop)
    else:
        problems += judge_spoofed(metrics, rounds, control, max_drop, spoofer, bound)
    status = f"finished (rounds 0-{rounds})" if finished else "NOT finished"
    verdict = "PROBLEMS: " + "; ".join(problems) if problems else "kept: every round recorded, the others evaluated"
    return not problems, f"{status}; {describe(kind, metrics, control)}; {verdict}"

