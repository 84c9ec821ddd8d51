"""Fault matrix: every injectable client fault, in round 0 and in a later round, through `flwr run`.

One tiny WarmFed run per case (2 clients: mnist and digits; round 0 + ``--rounds`` rounds; client 1 = digits
misbehaves), all on ONE private simulation SuperLink, plus a no-fault control. Each case
prints one line: what was injected, whether the run finished, what was lost (a domain left out of the synthetic
set, a client's update dropped in a round) and whether anything the design promises to keep was lost (every round
recorded, every client evaluated in every round). A case passes when the run finished, exactly the faulty
client's contribution to the faulty round was lost, and nothing else. The last line is ``N passed, N failed``;
the exit code is 1 when a case failed.

The simulation runs one client actor (Flower's default on 2 cores: clients take turns), two in the hang cases so
that the other client does not wait behind the hung one past the round timeout.

Usage (from the repository root):

    python -m benchmarks.fault_matrix --out results/fault_matrix.txt
    python -m benchmarks.fault_matrix --only exit hang --keep /tmp/fault-runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import BIN, ROOT
from benchmarks.run_suite import PrivateLink

KINDS = ("raise", "hang", "exit", "nan", "wrong-shape", "extra-key", "oversize", "absurd-examples")
PROCESS_FAULTS = ("raise", "hang", "exit")
DOMAINS = ("mnist", "digits")
FAULTY = 1
"""The partition id that misbehaves (digits)."""
LATER_ROUND = 1
HANG_PAST_TIMEOUT = 15.0
"""Seconds a hanging client sleeps past the round timeout."""
Loss = tuple[Any, ...]
"""('left out', domain, how) for round 0, ('dropped', client, round, how) later, ('model kept', round)."""


@dataclass(frozen=True)
class Case:
    """One fault kind in one round ('none' is the control)."""

    kind: str
    round: int = -1

    @property
    def name(self) -> str:
        """'exit in round 0' or 'no fault'."""
        return "no fault" if self.kind == "none" else f"{self.kind} in round {self.round}"

    def expected(self) -> set[Loss]:
        """What this fault should cost: the faulty client's contribution to the faulty round, nothing else."""
        if self.kind == "none":
            return set()
        how = "failed" if self.kind in PROCESS_FAULTS else "refused"
        if self.round == 0:
            return {("left out", DOMAINS[FAULTY], how)}
        return {("dropped", DOMAINS[FAULTY], self.round, how)}


def plan_cases(later_round: int, only: Sequence[str]) -> list[Case]:
    """The control, then every kind in round 0 and in ``later_round`` (limited to ``only`` when given)."""
    cases = [Case("none")] + [Case(kind, r) for kind in KINDS for r in (0, later_round)]
    return [c for c in cases if not only or c.kind in only]


def run_config(case: Case, args: argparse.Namespace, run_dir: Path, generator_base: str) -> dict[str, Any]:
    """The run-config overrides of one tiny case."""
    config: dict[str, Any] = {
        "algorithm": "warmfed", "device": "cpu", "output-dir": str(run_dir.parent), "run-name": run_dir.name,
        "data.domains": ",".join(DOMAINS), "data.num-clients": len(DOMAINS), "data.max-per-domain": 200,
        "train.rounds": args.rounds, "train.min-fit-clients": 1, "train.local-epochs": 1,
        "generator.base": generator_base, "lora.steps": 2, "lora.batch-size": 8,
        "synthesis.images-per-class": 4, "synthesis.steps": 2, "synthesis.max-upload-mb": 1.0,
        "warmfed.warm-epochs": 1, "faults.kind": case.kind,
    }
    if args.cache_dir:
        config["cache-dir"] = str(Path(args.cache_dir).expanduser().absolute())
    if case.kind != "none":
        config.update({"faults.clients": str(FAULTY), "faults.rounds": str(case.round)})
    if case.kind == "hang":
        config.update({"train.round-timeout": args.round_timeout,
                       "faults.hang-seconds": args.round_timeout + HANG_PAST_TIMEOUT})
    return config


def federation_config(case: Case) -> str:
    """The simulation's size and client resources: one CPU per client (two actors) only for the hang cases."""
    return f"num-supernodes={len(DOMAINS)}" + (" client-resources-num-cpus=1" if case.kind == "hang" else "")


def flwr_run(link: PrivateLink, config: dict[str, Any], federation: str, timeout: float) -> tuple[int, str]:
    """`flwr run . test --stream` with ``config`` overrides and ``federation`` config; (exit code, output)."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    command = [str(BIN / "flwr"), "run", ".", "test", "--stream", "--run-config", overrides,
               "--federation-config", federation]
    try:
        done = subprocess.run(command, env=link.procs.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        link.restart()
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout + done.stderr


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


def judge(case: Case, returncode: int, output: str, run_dir: Path, rounds: int, seconds: float) -> tuple[bool, str]:
    """Whether the case passed, and its report line."""
    head = f"{case.name:<28}"
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        metrics = {}
    finished = returncode == 0 and (run_dir / "summary.md").exists()
    status = f"finished (rounds 0-{rounds})" if finished else f"NOT finished (flwr exit code {returncode})"
    seen, reasons = observed_losses(metrics)
    expected = case.expected()
    lost = "; ".join(describe(loss, reasons[loss]) for loss in sorted(seen, key=str)) or "nothing"
    problems = broken_promises(metrics, rounds) if metrics else ["no metrics.json"]
    problems += [f"expected to lose {describe(loss, 'not recorded')}" for loss in sorted(expected - seen, key=str)]
    kept = ("kept: every round recorded, every client evaluated in every round" if not problems
            else "PROBLEMS: " + "; ".join(problems))
    passed = finished and seen == expected and not problems
    line = f"{'PASS' if passed else 'FAIL'}  {head} {status}; lost: {lost}; {kept}  [{seconds:.0f} s]"
    if not finished:
        line += "\n      last output: " + " | ".join(output.strip().splitlines()[-3:])[-400:]
    return passed, line


def tiny_generator(directory: Path) -> str:
    """An untrained tiny Stable Diffusion pipeline saved under ``directory`` (faults need no trained one)."""
    from warmfed_flwr.generative.foundation import build_tiny_pipeline

    build_tiny_pipeline(seed=0).save_pretrained(directory)
    return str(directory)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fault_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--only", nargs="+", choices=("none", *KINDS), default=[], help="run only these kinds")
    parser.add_argument("--rounds", type=int, default=1, help="rounds after round 0 (faults hit round 0 and 1)")
    parser.add_argument("--round-timeout", type=float, default=45.0,
                        help=f"train.round-timeout of the hang cases (they hang {HANG_PAST_TIMEOUT:.0f} s longer)")
    parser.add_argument("--generator-base", default="", help="diffusers directory (default: build a tiny one)")
    parser.add_argument("--cache-dir", default="", help="data cache (default: the project default)")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case; 0 when all passed, 1 otherwise."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    run_root = args.keep.expanduser().absolute() if args.keep else work / "runs"
    cases = plan_cases(LATER_ROUND, args.only)
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
    lines = [f"fault matrix ({datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; {machine}): "
             f"WarmFed, clients {', '.join(DOMAINS)}, rounds 0-{args.rounds}, client {FAULTY} ({DOMAINS[FAULTY]}) "
             f"misbehaves; hang cases: train.round-timeout {args.round_timeout:.0f} s, hang "
             f"{args.round_timeout + HANG_PAST_TIMEOUT:.0f} s"]
    print(lines[0], flush=True)
    link = PrivateLink()
    passed = 0
    try:
        generator_base = args.generator_base or tiny_generator(work / "tiny-sd")
        os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        link.start()
        for case in cases:
            run_dir = run_root / case.name.replace(" ", "-")
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.perf_counter()
            config = run_config(case, args, run_dir, generator_base)
            returncode, output = flwr_run(link, config, federation_config(case), args.timeout)
            ok, line = judge(case, returncode, output, run_dir, args.rounds, time.perf_counter() - started)
            passed += ok
            lines.append(line)
            print(line, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        link.stop()
        shutil.rmtree(link.home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    lines.append(f"{passed} passed, {len(cases) - passed} failed")
    print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
