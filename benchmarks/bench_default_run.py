"""Time the README's default `flwr run . --stream` and measure the peak memory of its whole process tree.

Runs the README command (local SuperLink started by `flwr run`, 4 simulated SuperNodes) under a private
FLWR_HOME, with a fresh cache (``--cache-dir`` unset: the digits benchmark is built afresh; the tiny foundation
ships with the package) or a given one (``--cache-dir DIR``: whatever DIR holds is reused). Every second it sums
the memory of every process that carries this FLWR_HOME in its environment (the `flwr` command, the SuperLink,
the SuperExec, the ServerApp, Ray and its actors inherit it), as PSS (shared pages split between the processes
sharing them) and as RSS (shared pages counted in every process, an upper bound). At the end it stops that
SuperLink and prints the wall time, both peaks and the run's per-stage seconds from metrics.json.

Usage (from the repository root, with the README's venv active):

    python benchmarks/bench_default_run.py                         # empty cache: builds the benchmark
    python benchmarks/bench_default_run.py --cache-dir /tmp/cache  # reuse /tmp/cache (run it twice: cached)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
LOCAL_SUPERLINK = ("127.0.0.1", 39091)
"""Where `flwr run .` starts (or finds and reuses) its local SuperLink."""
README_FEDERATION = "num-supernodes=4 client-resources-num-cpus=1"
"""The README first command's `--federation-config`."""


def listening(address: tuple[str, int]) -> bool:
    """Whether something accepts TCP connections at ``address``."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(address) == 0


def tree_processes(flwr_home: str) -> list[psutil.Process]:
    """Every live process whose environment has FLWR_HOME=``flwr_home``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == flwr_home:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def memory_of(processes: list[psutil.Process]) -> tuple[int, int]:
    """(PSS, RSS) summed over ``processes``, in bytes."""
    pss = rss = 0
    for proc in processes:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
    return pss, rss


class PeakSampler(threading.Thread):
    """Samples the tree's memory every ``interval`` seconds until stopped; keeps the peaks."""

    def __init__(self, flwr_home: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.flwr_home, self.interval = flwr_home, interval
        self.peak_pss = self.peak_rss = self.peak_processes = 0
        self.saw_superlink = False
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            processes = tree_processes(self.flwr_home)
            pss, rss = memory_of(processes)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(processes))
            self.saw_superlink = self.saw_superlink or any(_is_superlink(proc) for proc in processes)
            self.stopped.wait(self.interval)


def _is_superlink(proc: psutil.Process) -> bool:
    try:
        return any("flower-superlink" in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def stop_tree(flwr_home: str) -> None:
    """SIGKILL every process left with this FLWR_HOME (the detached local SuperLink and its children)."""
    for proc in tree_processes(flwr_home):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default="", help="reuse this cache (default: a fresh, empty one)")
    parser.add_argument("--federation-config", default=README_FEDERATION,
                        help=f"`flwr run --federation-config` (default: the README's, {README_FEDERATION!r})")
    parser.add_argument("--run-config", default="", help="extra `--run-config` overrides, e.g. \"seed=1\"")
    parser.add_argument("--keep", action="store_true", help="keep the run directory and fresh cache")
    args = parser.parse_args()

    if listening(LOCAL_SUPERLINK):
        sys.exit(f"a SuperLink already listens on {LOCAL_SUPERLINK[0]}:{LOCAL_SUPERLINK[1]}; `flwr run .` would send "
                 "the run there, outside the process tree this benchmark measures: stop it (pkill -f flower-superlink)")
    work = Path(tempfile.mkdtemp(prefix="bench-default-"))
    flwr_home = str(work / "flwr-home")
    cache = Path(args.cache_dir).resolve() if args.cache_dir else work / "cache"
    run_config = f'cache-dir="{cache}" output-dir="{work / "runs"}" run-name="default" {args.run_config}'.strip()
    command = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
               "--federation-config", args.federation_config, "--run-config", run_config]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_HOME": flwr_home, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    print(f"cache: {cache} ({'given' if args.cache_dir else 'fresh'}); command: {' '.join(command)}", flush=True)

    sampler = PeakSampler(flwr_home)
    sampler.start()
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        wall = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
        stop_tree(flwr_home)
    metrics_path = work / "runs" / "default" / "metrics.json"
    if done.returncode != 0 or not metrics_path.is_file():
        print("\n".join(done.stdout.splitlines()[-40:]))
        state = "present" if metrics_path.is_file() else "missing"
        sys.exit(f"the run failed (exit {done.returncode}, metrics.json {state})")
    if not sampler.saw_superlink:
        sys.exit("the sampled processes never included this run's SuperLink, so the memory figures are not the run's; "
                 "check that no other SuperLink took the run")
    metrics = json.loads(metrics_path.read_text())
    last = metrics["rounds"][-1]
    print(f"wall: {wall:.0f} s ({wall / 60:.1f} min), flwr exit {done.returncode}")
    print(f"peak memory of the process tree: PSS {sampler.peak_pss / GIB:.2f} GiB, "
          f"RSS sum {sampler.peak_rss / GIB:.2f} GiB (up to {sampler.peak_processes} processes, sampled every second)")
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in metrics.get("time_seconds", {}).items()))
    print(f"final round {last.get('round')}: global pooled {last.get('global_acc_pooled')}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
