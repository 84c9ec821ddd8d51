"""Fault matrix: every injectable client fault and attack, in the rounds it applies to, through `flwr run`.

One tiny WarmFed run per case (3 clients: mnist, digits and fonts, 400 images each, 3 local epochs; round 0 +
``--rounds`` rounds, faults in round 0 or 1, then honest rounds; client 1 = digits misbehaves), all on ONE private
simulation SuperLink, after a no-fault control. Every run has the robust settings on:
train.aggregation median (3 clients, so that one outlier never sets a coordinate), train.clip-norm (``--clip-norm``, a
few x an honest update's norm) and train.example-weighting capped. Cases (benchmarks/fault_cases.py): process faults
and refused uploads in round 0 and round 1; update attacks that pass validation (scale, sign-flip, lie-examples) in
round 1, each run once more with the robust settings off (plain FedAvg: its outcome is recorded beside the case, not
judged); round-0 attacks (swap-rows, huge-adapter); corrupt-cache (the control's synthetic cache file of digits cut
to half before an otherwise fault-free run); and, on their own deployment-engine SuperLinks with real SuperNode
processes, killed-supernode and spoofed-name (benchmarks/fault_deployment.py). A case passes on outcomes only: the
run finished, exactly the faulty client's contribution to the faulty round was lost (left out, dropped or clipped,
named with its recorded reason), nothing the design keeps was lost, and the final global accuracy is at most
``--max-drop`` below the control's. The last line is ``N passed, N failed``; the exit code is 1 when a case failed.

The simulation runs one client actor (Flower's default on 2 cores: clients take turns), two in the hang cases so
that the other clients do not wait behind the hung one past the round timeout.

Usage (from the repository root):

    python -m benchmarks.fault_matrix --out results/fault_matrix.txt
    python -m benchmarks.fault_matrix --only exit swap-rows --keep /tmp/fault-runs
    python -m benchmarks.fault_matrix --only killed-supernode spoofed-name
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
from pathlib import Path
from typing import Any

from benchmarks.fault_cases import (
    CORRUPT_CACHE,
    DOMAINS,
    FAULTY,
    KINDS,
    UPDATE_ATTACKS,
    Case,
    final_accuracy,
    judge,
    plain_outcome,
    plan_cases,
    read_metrics,
    rebuilt_note,
    synthetic_cache_file,
    truncate,
)
from benchmarks.fault_deployment import CASE_NAMES, DEPLOYMENT_KINDS, deployment_case
from benchmarks.harness import BIN, ROOT
from benchmarks.run_suite import PrivateLink
from warmfed_flwr.data import default_cache_dir
from warmfed_flwr.errors import CheckpointError

HANG_PAST_TIMEOUT = 15.0
"""Seconds a hanging client sleeps past the round timeout."""
ROBUST = {"train.aggregation": "median", "train.example-weighting": "capped"}
PLAIN = {"train.aggregation": "mean", "train.example-weighting": "examples", "train.clip-norm": 0.0}
DEPLOYMENT_ROUND_TIMEOUTS = {"killed-supernode": 90.0, "spoofed-name": 300.0}
"""train.round-timeout of the deployment cases: every message starts a ClientApp process there (torch and diffusers
imports). Four SuperNodes starting their round-0 ClientApps at once on 2 cores took longer than 90 s: a reply later
than the timeout is lost ('Reply message objects are unavailable'), and the client's domain with it."""
CLIP_NORM = 25.0
"""train.clip-norm of the robust runs: about 3 x an honest update's norm in these tiny runs (sign-flip: 10 x)."""


def run_config(case: Case, args: argparse.Namespace, run_dir: Path, generator_base: str) -> dict[str, Any]:
    """The run-config overrides of one tiny case (robust settings on unless ``case.plain``)."""
    config: dict[str, Any] = {
        "algorithm": "warmfed", "device": "cpu", "output-dir": str(run_dir.parent), "run-name": run_dir.name,
        "data.domains": ",".join(DOMAINS), "data.num-clients": len(DOMAINS), "data.max-per-domain": 400,
        "train.rounds": args.rounds, "train.min-fit-clients": 1, "train.local-epochs": 3, "train.lr": 0.05,
        "generator.base": generator_base, "lora.steps": 2, "lora.batch-size": 8,
        "synthesis.images-per-class": 4, "synthesis.steps": 2, "synthesis.max-upload-mb": 1.0,
        "warmfed.warm-epochs": 1, "cache-dir": str(args.cache_dir), "faults.kind": case.injected,
        **(PLAIN if case.plain else {**ROBUST, "train.clip-norm": args.clip_norm}),
    }
    if case.kind == "lie-examples" and not case.plain:
        config["train.aggregation"] = "mean"  # the median ignores counts: capped weighting only acts in the mean
    if case.injected != "none":
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


class Matrix:
    """The cases' runs on one SuperLink, each judged against the control's final accuracy."""

    def __init__(self, args: argparse.Namespace, link: PrivateLink, run_root: Path, generator_base: str) -> None:
        self.args = args
        self.link = link
        self.run_root = run_root
        self.generator_base = generator_base
        self.control: float | None = None

    def run_dir(self, case: Case) -> Path:
        """Where ``case`` writes its run."""
        return self.run_root / case.name.replace(",", "").replace(" ", "-")

    def launch(self, case: Case) -> tuple[bool, str]:
        """Run ``case`` afresh; (finished, the last lines of its output when it did not)."""
        run_dir = self.run_dir(case)
        shutil.rmtree(run_dir, ignore_errors=True)
        config = run_config(case, self.args, run_dir, self.generator_base)
        returncode, output = flwr_run(self.link, config, federation_config(case), self.args.timeout)
        if returncode == 0 and (run_dir / "summary.md").exists():
            return True, ""
        tail = " | ".join(output.strip().splitlines()[-3:])[-400:]
        return False, f"\n      flwr exit code {returncode}; last output: {tail}"

    def case_line(self, case: Case) -> tuple[bool, str]:
        """Run ``case`` (and its plain-FedAvg twin for an update attack); whether it passed, and its report line."""
        started = time.perf_counter()
        problems: list[str] = []
        cut: tuple[Path, int] | None = None
        if case.kind == CORRUPT_CACHE:
            try:
                path = synthetic_cache_file(self.run_dir(Case("none")), self.args.cache_dir, DOMAINS[FAULTY])
                cut = (path, truncate(path))
            except (CheckpointError, KeyError, OSError) as exc:
                problems.append(f"no synthetic cache file of the control to corrupt ({type(exc).__name__}: {exc})")
        finished, failure = self.launch(case)
        if cut is not None and (note := rebuilt_note(cut[0], cut[1] // 2)):
            problems.append(note)
        if case.kind == "none":
            self.control = final_accuracy(read_metrics(self.run_dir(case)))
        passed, report = judge(case, finished, self.run_dir(case), self.args.rounds, self.control,
                               self.args.max_drop, problems)
        if cut is not None and not problems:
            report = f"{cut[0].name} cut to {cut[1] // 2} of {cut[1]} bytes, rebuilt; {report}"
        if case.kind in UPDATE_ATTACKS:
            plain = Case(case.kind, case.round, plain=True)
            plain_finished, plain_failure = self.launch(plain)
            failure += "\n      " + plain_outcome(plain_finished, self.run_dir(plain), self.control) + plain_failure
        seconds = time.perf_counter() - started
        return passed, f"{'PASS' if passed else 'FAIL'}  {case.name:<26} {report}  [{seconds:.0f} s]{failure}"

    def deployment_line(self, kind: str, home: Path) -> tuple[bool, str]:
        """Run the deployment case ``kind`` with the control's config on its own SuperLink; whether it passed, and
        its report line."""
        started = time.perf_counter()
        control_run = self.run_dir(Case("none"))
        run_dir = self.run_root / kind
        shutil.rmtree(run_dir, ignore_errors=True)
        config = {**run_config(Case("none"), self.args, run_dir, self.generator_base),
                  "train.round-timeout": DEPLOYMENT_ROUND_TIMEOUTS[kind]}
        passed, report = deployment_case(kind, config, home, self.args.rounds, control_run, self.args.max_drop,
                                         self.args.timeout)
        seconds = time.perf_counter() - started
        return passed, f"{'PASS' if passed else 'FAIL'}  {CASE_NAMES[kind]:<26} {report}  [{seconds:.0f} s]"


def tiny_generator(directory: Path) -> str:
    """An untrained tiny Stable Diffusion pipeline saved under ``directory`` (faults need no trained one)."""
    from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline

    build_tiny_pipeline(seed=0).save_pretrained(directory)
    return str(directory)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fault_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--only", nargs="+", choices=("none", *KINDS, *DEPLOYMENT_KINDS), default=[],
                        help="run only these kinds (and the control)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds after round 0 (faults hit round 0 or 1; later rounds show what a fault left)")
    parser.add_argument("--clip-norm", type=float, default=CLIP_NORM,
                        help="train.clip-norm of the robust runs (default: a few x an honest update's norm here)")
    parser.add_argument("--max-drop", type=float, default=0.05,
                        help="how far (pooled accuracy, 0-1) a case's final accuracy may fall below the control's")
    parser.add_argument("--round-timeout", type=float, default=45.0,
                        help=f"train.round-timeout of the hang cases (they hang {HANG_PAST_TIMEOUT:.0f} s longer)")
    parser.add_argument("--generator-base", default="", help="diffusers directory (default: build a tiny one)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="data cache (default: the project default)")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args(argv)
    args.cache_dir = (args.cache_dir or default_cache_dir()).expanduser().absolute()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case; 0 when all passed, 1 otherwise."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    run_root = args.keep.expanduser().absolute() if args.keep else work / "runs"
    cases = plan_cases(args.only)
    kinds = [kind for kind in DEPLOYMENT_KINDS if not args.only or kind in args.only]
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
    lines = [f"fault matrix ({datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; {machine}): "
             f"WarmFed, clients {', '.join(DOMAINS)}, rounds 0-{args.rounds}, client {FAULTY} ({DOMAINS[FAULTY]}) "
             f"misbehaves; robust settings: train.aggregation median, train.clip-norm {args.clip_norm:g}, "
             f"train.example-weighting capped; pass: final accuracy at most {args.max_drop:.2f} below the control's; "
             f"hang cases: train.round-timeout {args.round_timeout:.0f} s, hang "
             f"{args.round_timeout + HANG_PAST_TIMEOUT:.0f} s; deployment-engine cases (own SuperLink, real "
             "SuperNodes): train.round-timeout "
             + ", ".join(f"{seconds:.0f} s ({kind})" for kind, seconds in DEPLOYMENT_ROUND_TIMEOUTS.items())]
    print(lines[0], flush=True)
    link = PrivateLink()
    passed = 0
    try:
        generator_base = args.generator_base or tiny_generator(work / "tiny-sd")
        os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        link.start()
        matrix = Matrix(args, link, run_root, generator_base)
        for case in cases:
            ok, line = matrix.case_line(case)
            passed += ok
            lines.append(line)
            print(line, flush=True)
        for kind in kinds:
            ok, line = matrix.deployment_line(kind, run_root / f"{kind}-processes")
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
    lines.append(f"{passed} passed, {len(cases) + len(kinds) - passed} failed")
    print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if passed == len(cases) + len(kinds) else 1


if __name__ == "__main__":
    sys.exit(main())
