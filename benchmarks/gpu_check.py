"""The paper-scale GPU check, ready to run on a GPU machine that can download nothing (about 5 minutes on one H100
by estimate; not yet measured).

1. ``warmfed-build-random-sd`` writes a Stable Diffusion 2.1-base pipeline with the real architecture and seeded
   random weights (float16) into ``--work``;
2. ``benchmarks/gpu_smoke.py`` runs on it twice, each in a fresh process: 1 client, then 2 clients whose round 0
   runs at once on the one GPU (two processes, as Ray runs two client actors at 0.5 GPU each), with the paper config
   ``--experiment`` reduced by the smoke (LoRA batch 4 at 512 px, 50 DDIM steps at ``data.image-size``);
3. ``--out`` (results/gpu_smoke.md) gets the card, each stage's time and peak GPU memory, LoRA seconds per step,
   synthesis images per second, whether two clients fit on one GPU, and warmfed-plan's figures against the measured.

The weights are random: times and memory are the architecture's, the images are noise and no accuracy is reported.
Each smoke's log and JSON land in ``--logs``. Arguments after ``--`` go to every smoke run (e.g. ``--set k=v``).

    bash benchmarks/gpu_check.sh                                    # on the GPU machine
    python -m benchmarks.gpu_check --out results/gpu_smoke.md --logs /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

GIB = 2**30
RUNS = (("1 client", ["--clients", "1"]),
        ("2 clients at once on one GPU (0.5 each)", ["--clients", "2", "--concurrent"]))
"""The smoke runs of the check: a label and the smoke's arguments."""
RESERVE_S = 10
"""Seconds of the budget kept for writing the report after the last run."""
TAIL_LINES = 25


@dataclass
class SmokeRun:
    """One smoke run: its label, arguments, wall time, exit code, JSON result (None when it failed) and log tail."""

    label: str
    args: list[str]
    seconds: float
    returncode: int
    result: dict[str, Any] | None
    tail: str


def run_smoke(label: str, args: list[str], logs: Path, index: int, timeout: float) -> SmokeRun:
    """``python -m benchmarks.gpu_smoke *args --json ...`` in a fresh process, offline, its output in a log."""
    json_path, log_path = logs / f"gpu_smoke_{index}.json", logs / f"gpu_smoke_{index}.log"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.gpu_smoke", *args, "--json", str(json_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  cwd=Path(__file__).resolve().parent.parent).returncode
        except subprocess.TimeoutExpired:
            code = -1
            log.write(f"\nstopped after {timeout:.0f} s (the check's time budget)\n")
    seconds = time.perf_counter() - started
    result = json.loads(json_path.read_text()) if code == 0 and json_path.is_file() else None
    tail = "\n".join(log_path.read_text().splitlines()[-TAIL_LINES:])
    return SmokeRun(label, args, seconds, code, result, tail)


def machine() -> dict[str, str]:
    """The GPU (from nvidia-smi, so this process holds no CUDA context) and the library versions."""
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpus = ""
    info = {"gpu": gpus.replace("\n", "; ") or "none (nvidia-smi found no GPU)", "python": sys.version.split()[0]}
    for package in ("torch", "diffusers", "transformers", "peft"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return info


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def stage_table(result: dict[str, Any]) -> list[str]:
    """A markdown table of the smoke's stages (GPU memory on CUDA, RSS on CPU)."""
    if not result["device_memory"]:
        return ["| stage | time (s) | peak RSS (GiB) |", "| --- | ---: | ---: |",
                *(f"| {r['name']} | {r['seconds']:.1f} | {_gib(r['peak'])} |" for r in result["rows"])]
    return ["| stage | time (s) | peak allocated (GiB) | peak reserved (GiB) | reserved after (GiB) |",
            "| --- | ---: | ---: | ---: | ---: |",
            *(f"| {r['name']} | {r['seconds']:.1f} | {_gib(r['peak'])} | {_gib(r['peak_reserved'])} | "
              f"{_gib(r['reserved_after'])} |" for r in result["rows"])]


def fit_verdict(run: SmokeRun) -> str:
    """Whether the clients of a concurrent run fit on the GPU together, in one sentence."""
    if run.result is not None:
        memory = (f"; GPU memory in use at peak (all processes) {_gib(run.result['round0_device_peak'])} of "
                  f"{_gib(run.result['device_memory'])} GiB" if run.result["device_memory"] else "")
        return f"yes: both clients' round 0 ran at once in {run.result['round0_seconds']:.1f} s{memory}."
    if "out of memory" in run.tail.lower():
        return "no: a client ran out of GPU memory (log tail below)."
    return "unknown: the run failed before answering (log tail below)."


def render(info: dict[str, str], build: str, runs: list[SmokeRun], command: str) -> str:
    """The report: machine, how the generator was made, and per run its stages, summary and plan checks."""
    lines = [
        "# GPU smoke on a random-weight Stable Diffusion pipeline",
        "",
        f"Written by `{command}` (benchmarks/gpu_check.py) on {info['date']}.",
        "",
        f"- GPU: {info['gpu']}",
        f"- Python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}, transformers "
        f"{info['transformers']}, peft {info['peft']}",
        f"- Generator: {build}",
        "",
        "The generator's weights are random (seeded): times and memory are those of the architecture, its images are "
        "noise, and no accuracy is reported. Each run is `benchmarks/gpu_smoke.py` in a fresh process: a paper config "
        "reduced to random clients and a few LoRA steps (each run's config below; LoRA at the paper's batch and the "
        "generator's size, the paper's sampler at `data.image-size`), warm start and one globalization round. "
        "Memory per stage is that process's peak (`torch.cuda.max_memory_allocated` / `max_memory_reserved`); "
        "'plan check' lines put warmfed-plan's figures for the same config and clients against the measured ones "
        "(memory estimates count as right within 25 %).",
    ]
    for run in runs:
        lines += ["", f"## {run.label}", "", f"`gpu_smoke.py {shlex.join(run.args)}`: {run.seconds:.0f} s wall, "
                  f"exit code {run.returncode}" + (" (stopped at the time budget)" if run.returncode == -1 else ""), ""]
        if run.result is not None:
            config = ", ".join(f"{k} {v}" for k, v in run.result["config"].items())
            lines += [f"Config: {config}; generator {run.result['generator_size']} px.", "", *stage_table(run.result),
                      "", *(f"- {line}" for line in run.result["report"])]
        if "--concurrent" in run.args:
            lines += ["", f"Two clients fit on one GPU at 0.5 each: {fit_verdict(run)}"]
        if run.result is None:
            lines += ["", "```text", run.tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Build the random pipeline (unless ``--base``), run the smoke runs within the budget, write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/gpu_smoke.md"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "warmfed-gpu-check",
                        help="where the random pipeline is written (about 2.6 GB for sd21base)")
    parser.add_argument("--logs", type=Path, default=None, help="the smokes' logs and JSON (default: --work)")
    parser.add_argument("--arch", choices=("sd21base", "sd15"), default="sd21base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default=None, help="an existing diffusers directory instead of building one")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--experiment", default="paper/pacs")
    parser.add_argument("--budget-s", type=float, default=480, help="wall-clock budget of the whole check")
    parser.add_argument("smoke_args", nargs=argparse.REMAINDER, help="-- then arguments for every smoke run")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    logs = args.logs or args.work
    logs.mkdir(parents=True, exist_ok=True)
    if args.base:
        base, build = args.base, f"`{args.base}` (given)"
    else:
        from warmfed_flwr.generative import random_sd

        base = str(args.work / f"{args.arch}-random")
        random_sd.main(["--arch", args.arch, "--seed", str(args.seed), "--out", base])
        build = (f"{args.arch} architecture (warmfed_flwr/generative/sd_configs/{args.arch}), random weights of seed "
                 f"{args.seed}, built and written as float16 by warmfed-build-random-sd in "
                 f"{time.perf_counter() - started:.0f} s")
    print(f"generator: {build}", flush=True)
    extra = args.smoke_args[1:] if args.smoke_args[:1] == ["--"] else args.smoke_args
    runs: list[SmokeRun] = []
    for index, (label, run_args) in enumerate(RUNS):
        left = args.budget_s - (time.perf_counter() - started) - RESERVE_S
        smoke_args = ["--base", base, "--device", args.device, "--experiment", args.experiment, *run_args, *extra]
        if left <= 0:
            runs.append(SmokeRun(label, smoke_args, 0.0, -1, None, "not started: the time budget was spent"))
            continue
        runs.append(run_smoke(label, smoke_args, logs, index, left))
        print(f"{label}: exit code {runs[-1].returncode} after {runs[-1].seconds:.0f} s", flush=True)
    command = shlex.join(["python", "-m", "benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(machine(), build, runs, command))
    print(f"wrote {args.out} after {time.perf_counter() - started:.0f} s", flush=True)
    if any(run.result is None for run in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
