"""How time, memory and bytes grow with the number of clients: WarmFed and FedAvg with 4, 16 and 64 clients.

Every domain of the digits benchmark is split among k clients (``data.clients-per-domain``, 4 domains, so
4k clients), the same capped data in every run, at a fixed synthetic budget (``synthesis.total-images``). Each
run goes through `flwr run` on one private simulation SuperLink; a sampler reads the memory (PSS) of every process
under that SuperLink's FLWR_HOME once a second and keeps the peak of the ServerApp process (``flwr-simulation``)
and of each Ray client actor. Writes ``--out`` (markdown, the command at its top), ``<out stem>.json`` and
``<out stem>.png``.

Usage (from the repository root):

    python -m benchmarks.bench_scale --clients 4 16 64 --out results/scale.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import psutil  # noqa: E402

from benchmarks.harness import flwr_run, read_metrics  # noqa: E402
from benchmarks.run_suite import PrivateLink, machine_description  # noqa: E402

MIB = 1024**2
DOMAINS = 4
RUN_SIZE = {
    "data.max-per-domain": 1000,
    "train.rounds": 2,
    "lora.steps": 10,
    "lora.batch-size": 16,
    "synthesis.total-images": 400,
    "synthesis.quality-check": False,
    "train.min-fit-clients": 2,
}
"""What fits 2 cores: 1,000 images per domain (split among its clients), 2 rounds after round 0, short LoRA,
400 synthetic images in all; the quality diagnostic is off (it trains one classifier per client)."""
ROUND0_CLIENTS = 8
"""Round 0 asks at most this many clients (``warmfed.round0-fraction`` = min(1, 8 / clients)): on 2 cores one
client's LoRA upload takes tens of seconds, so asking all 64 would make round 0 alone last about half an hour."""
SERVER_COMPUTE = ("synthesis", "warm_start_training", "server_finetune", "synthetic_quality")
"""Server stages that are pure compute (no client in the loop)."""


def process_kind(proc: psutil.Process) -> str:
    """'server' (the simulation's ServerApp process), 'actor' (a Ray client actor) or 'other'."""
    try:
        line = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    if "ClientAppActor" in line:
        return "actor"
    return "server" if "flwr-simulation" in line else "other"


class MemorySampler(threading.Thread):
    """Peak PSS per process under one FLWR_HOME, sampled every ``interval`` seconds until stopped; a process is
    classified again at every sample, since a Ray worker takes its actor's name only once the actor starts."""

    def __init__(self, flwr_home: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.flwr_home, self.interval = flwr_home, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.concurrent_actors = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            actors = 0
            for proc in psutil.process_iter():
                try:
                    if proc.environ().get("FLWR_HOME") != self.flwr_home:
                        continue
                    pss = getattr(proc.memory_full_info(), "pss", 0)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                seen, peak = self.peaks.get(proc.pid, ("other", 0))
                kind = process_kind(proc)
                self.peaks[proc.pid] = (seen if kind == "other" else kind, max(peak, pss))
                actors += kind == "actor"
            self.concurrent_actors = max(self.concurrent_actors, actors)
            self.stopped.wait(self.interval)

    def peak(self, kind: str) -> tuple[int, int]:
        """(largest peak PSS among processes of ``kind``, how many there were)."""
        values = [pss for k, pss in self.peaks.values() if k == kind]
        return max(values, default=0), len(values)


def run_config(algorithm: str, clients: int, root: Path, cache: Path) -> dict[str, Any]:
    """The overrides of one run."""
    return {**RUN_SIZE, "warmfed.round0-fraction": min(1.0, ROUND0_CLIENTS / clients),
            "algorithm": algorithm, "data.clients-per-domain": clients // DOMAINS,
            "data.num-clients": clients, "seed": 0, "device": "cpu", "cache-dir": str(cache),
            "output-dir": str(root), "run-name": f"{algorithm}-{clients}"}


def measure(link: PrivateLink, algorithm: str, clients: int, root: Path, cache: Path, timeout: float) -> dict:
    """Run one configuration and return its figures."""
    sampler = MemorySampler(str(link.home))
    sampler.start()
    started = time.perf_counter()
    try:
        done = flwr_run(link.procs, run_config(algorithm, clients, root, cache), clients, timeout)
    finally:
        wall = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
    run_dir = root / f"{algorithm}-{clients}"
    if done.returncode != 0 or not (run_dir / "metrics.json").is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{algorithm} with {clients} clients failed (exit {done.returncode}):\n{tail}")
    metrics = read_metrics(run_dir)
    server_peak, _ = sampler.peak("server")
    actor_peak, actor_processes = sampler.peak("actor")
    actors = sampler.concurrent_actors
    if not server_peak or not actors:
        seen = sorted(kind for kind, _ in sampler.peaks.values())
        raise RuntimeError(f"{algorithm} with {clients} clients: the sampler never saw the run's ServerApp or client "
                           f"actors (process kinds seen: {seen})")
    return {**figures(algorithm, clients, wall, metrics, server_peak, actor_peak, actors),
            "actor_processes": actor_processes}


def figures(algorithm: str, clients: int, wall: float, metrics: dict, server_peak: int, actor_peak: int,
            actors: int) -> dict[str, Any]:
    """One row: stage seconds, the share of time outside compute, peaks, bytes per client, accuracy."""
    rounds, seconds = metrics["rounds"], metrics["time_seconds"]
    client_compute = sum((row.get("client_compute_seconds_sum") or 0.0) + (row.get("client_eval_compute_seconds_sum")
                                                                           or 0.0) for row in rounds)
    server_compute = sum(seconds.get(stage, 0.0) for stage in SERVER_COMPUTE)
    compute = server_compute + client_compute / actors
    messages = sum((row.get("clients_sampled") or 0) + (row.get("clients_evaluated") or 0)
                   + (row.get("clients_eval_failed") or 0) for row in rounds)
    return {
        "messages": messages, "not_compute_seconds": max(0.0, seconds["total"] - compute),
        "algorithm": algorithm, "clients": clients, "wall_seconds": wall, "stages": seconds,
        "client_compute_seconds": client_compute, "server_compute_seconds": server_compute, "actors": actors,
        "not_compute_share": max(0.0, 1.0 - compute / seconds["total"]),
        "server_peak_mib": server_peak / MIB, "actor_peak_mib": actor_peak / MIB,
        "bytes_down_per_client": sum(row.get("bytes_down_per_client") or 0 for row in rounds),
        "bytes_up_per_client": sum(row.get("bytes_up_per_client") or 0 for row in rounds),
        "synthetic_images": next((row.get("synthetic_images") for row in rounds if row["round"] == 0), None),
        "final_acc": rounds[-1].get("global_acc_pooled"),
    }


def ratio_lines(rows: list[dict]) -> list[str]:
    """The issue's four checks, largest against smallest client count, per algorithm."""
    checks = (("server synthesis seconds", lambda r: r["stages"].get("synthesis"), 1.5),
              ("peak memory per client actor", lambda r: r["actor_peak_mib"], 1.25),
              ("bytes each client receives", lambda r: r["bytes_down_per_client"], 1.25))
    lines = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        group = sorted((r for r in rows if r["algorithm"] == algorithm), key=lambda r: r["clients"])
        low, high = group[0], group[-1]
        for name, value, bound in checks:
            if not value(low) or value(high) is None:
                continue
            ratio = value(high) / value(low)
            verdict = "within" if ratio <= bound else "ABOVE"
            lines.append(f"- {algorithm}, {name}: {high['clients']} vs {low['clients']} clients x{ratio:.2f} "
                         f"({verdict} the x{bound} target)")
        share = high["not_compute_share"]
        lines.append(f"- {algorithm}, time not in compute at {high['clients']} clients: {100 * share:.0f} % "
                     f"({'within' if share <= 0.15 else 'ABOVE'} the 15 % target)")
    return lines


def overhead_lines(rows: list[dict]) -> list[str]:
    """What the time outside compute is made of: a part fixed per run and a part per client message (fit or
    evaluate), from the smallest and the largest client count of each algorithm."""
    lines = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        group = sorted((r for r in rows if r["algorithm"] == algorithm), key=lambda r: r["clients"])
        low, high = group[0], group[-1]
        if high["messages"] == low["messages"]:
            continue
        per_message = (high["not_compute_seconds"] - low["not_compute_seconds"]) / (high["messages"] - low["messages"])
        fixed = low["not_compute_seconds"] - per_message * low["messages"]
        lines.append(
            f"- {algorithm}: outside compute {low['not_compute_seconds']:.0f} s with {low['clients']} clients "
            f"({low['messages']} client messages) and {high['not_compute_seconds']:.0f} s with {high['clients']} "
            f"({high['messages']} messages): {1000 * per_message:.0f} ms per extra message and about {fixed:.0f} s "
            f"fixed per run, {100 * fixed / high['stages']['total']:.0f} % of the {high['clients']}-client run")
    return lines


def table(rows: list[dict]) -> list[str]:
    """The markdown table, one row per run."""
    header = ["algorithm", "clients", "wall s", "client LoRA s", "synthesis s", "warm start s", "client rounds s",
              "evaluation s", "not compute", "server peak MiB", "actor peak MiB (actors at once)", "down/client kB",
              "up/client kB", "synthetic images", "final pooled %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        s = r["stages"]
        cells = [r["algorithm"], str(r["clients"]), f"{r['wall_seconds']:.0f}",
                 *[f"{s[k]:.0f}" if k in s else "-" for k in ("client_lora", "synthesis", "warm_start_training",
                                                               "client_rounds", "evaluation")],
                 f"{100 * r['not_compute_share']:.0f} %", f"{r['server_peak_mib']:.0f}",
                 f"{r['actor_peak_mib']:.0f} ({r['actors']})", f"{r['bytes_down_per_client'] / 1e3:.0f}",
                 f"{r['bytes_up_per_client'] / 1e3:.0f}", str(r["synthetic_images"] or "-"),
                 f"{100 * r['final_acc']:.1f}" if r["final_acc"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Four panels against the client count: wall seconds, peak memory, bytes received, accuracy."""
    panels = (("wall seconds", lambda r: r["wall_seconds"]), ("peak PSS per client actor (MiB)",
              lambda r: r["actor_peak_mib"]), ("bytes received per client (kB)",
              lambda r: r["bytes_down_per_client"] / 1e3), ("final pooled accuracy (%)",
              lambda r: 100 * (r["final_acc"] or 0.0)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
            group = sorted((r for r in rows if r["algorithm"] == algorithm), key=lambda r: r["clients"])
            ax.plot([r["clients"] for r in group], [value(r) for r in group], marker="o", label=algorithm)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients")
        ax.set_title(title, fontsize=9)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, rows: list[dict], command: str) -> None:
    """The markdown report, its JSON and its plot."""
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out.with_suffix(".png"))
    overrides = ", ".join(f"`{k}={v}`" for k, v in RUN_SIZE.items())
    text = [
        "# Scaling with the number of clients", "", f"Command: `{command}`", "",
        f"Machine: {machine_description('cpu')}; seed 0, one run per row; digits benchmark, {DOMAINS} domains "
        f"split among k clients each (`data.clients-per-domain`), run size: {overrides}; round 0 asks at most "
        f"{ROUND0_CLIENTS} clients (`warmfed.round0-fraction` = min(1, {ROUND0_CLIENTS} / clients)), every client "
        "takes part in the later rounds.", "",
        *table(rows), "", f"![scaling]({out.with_suffix('.png').name})", "", "Against the targets:", "",
        *ratio_lines(rows), "",
        "Where the time outside compute goes (a line through the smallest and the largest run):", "",
        *overhead_lines(rows), "",
        "The fixed part is paid once per run whatever the number of clients: Ray starting the client actor, the "
        "actor importing torch, Flower and diffusers and loading its first partition and model, the ServerApp "
        "loading the generator (the `other` stage). It dominates these 2-round runs of a few minutes; the "
        "per-message part is what grows with clients.", "",
        "Definitions: stage seconds are the server's wall time per stage (client LoRA = round 0's fit phase, client "
        "rounds = the later fit phases, both including Flower and Ray). Not compute = 1 - (server compute stages + "
        "the clients' summed `compute_seconds` of fit and evaluate / the most Ray client actors alive at once) / "
        "the ServerApp's total. Peaks are PSS (shared pages split "
        "between the processes sharing them), sampled once a second. Bytes are the fit exchanges per client summed "
        "over rounds (evaluation traffic is not counted).", ""]
    out.write_text("\n".join(text))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    """Run every algorithm x client count, then write the report; 1 when a run failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--algorithms", nargs="+", default=["warmfed", "fedavg"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = parser.parse_args(argv)
    if any(n % DOMAINS for n in args.clients):
        parser.error(f"--clients must be multiples of {DOMAINS} (k clients per domain)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    link = PrivateLink()
    rows = []
    try:
        link.start()
        for algorithm in args.algorithms:
            for clients in args.clients:
                row = measure(link, algorithm, clients, work / "runs", work / "cache", args.timeout)
                print(f"{algorithm} {clients} clients: {row['wall_seconds']:.0f} s, not compute "
                      f"{100 * row['not_compute_share']:.0f} %, actor peak {row['actor_peak_mib']:.0f} MiB", flush=True)
                rows.append(row)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        link.stop()
    write(args.out.absolute(), rows, shlex.join(["python", "-m", "benchmarks.bench_scale", *argv]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
