"""Start a private SuperLink (simulation or deployment) for tests and run the app through `flwr run`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Block until something listens on ``port``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Processes started in their own process groups, ended as whole groups."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "COLUMNS": "400", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``args`` logging to ``home/name.log``."""
        log = (self.home / f"{name}.log").open("w")
        proc = subprocess.Popen(list(args), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """End every started process group."""
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def start_superlink(procs: Processes, simulation: bool, extra: tuple[str, ...] = ("--insecure",)) -> int:
    """Start a SuperLink (Control, Runtime and Fleet APIs share one port since Flower 1.41); return the port
    and register it as the connection 'test'."""
    port = free_port()
    args = [str(BIN / "flower-superlink"), *extra, "--host", "127.0.0.1", "--port", str(port),
            "--database", str(procs.home / "state.db"), "--disable-runtime-dependency-installation"]
    if simulation:
        args += ["--simulation", "--isolation", "subprocess"]
    procs.start("superlink", *args)
    wait_for_port(port)
    secure = "insecure = true" if "--insecure" in extra else f'root-certificates = "{procs.home / "ca.crt"}"'
    (procs.home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n{secure}\n'
    )
    return port


def flwr_run_args(run_config: dict, num_supernodes: int | None) -> list[str]:
    """The `flwr run . test --stream` command line with ``run_config`` overrides."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    args = [str(BIN / "flwr"), "run", ".", "test", "--stream", "--run-config", overrides]
    if num_supernodes is not None:
        args += ["--federation-config", f"num-supernodes={num_supernodes}"]
    return args


def flwr_run(
    procs: Processes, run_config: dict, num_supernodes: int | None, timeout: float
) -> subprocess.CompletedProcess:
    """`flwr run . test --stream` with ``run_config`` overrides; returns the finished command."""
    return subprocess.run(flwr_run_args(run_config, num_supernodes), env=procs.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_statuses(procs: Processes) -> list[str]:
    """The status of every run the SuperLink knows ('finished:completed', 'finished:failed', ...), oldest first
    (by submission time: run ids are random)."""
    done = subprocess.run([str(BIN / "flwr"), "ls", "test", "--format", "json"], env=procs.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    runs = json.loads(done.stdout)["runs"]
    return [run["status"] for run in sorted(runs, key=lambda run: run["pending-at"])]


def read_metrics(run_dir: Path) -> dict:
    """The metrics.json a finished run wrote; NaN or Infinity in it (not strict JSON) fails the test."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}, which strict JSON readers reject")

    return json.loads((run_dir / "metrics.json").read_text(), parse_constant=refuse)


def round_evaluated(metrics: str | Path, algo_round: int) -> bool:
    """Whether the run's metrics.json records the evaluation of algorithm round ``algo_round``."""
    try:
        rows = json.loads(Path(metrics).read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return False
    return any(row["round"] == algo_round and "clients_evaluated" in row for row in rows)


def wait_for_round(metrics: str | Path, run: subprocess.Popen, algo_round: int, timeout: float) -> None:
    """Block until the run recorded the evaluation of algorithm round ``algo_round``."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        if round_evaluated(metrics, algo_round):
            return
        time.sleep(0.5)
    raise TimeoutError(f"round {algo_round} not evaluated within {timeout:.0f} s (run exit code {run.poll()})")


def start_supernode(procs: Processes, superlink_port: int, partition_id: int, num_partitions: int,
                    extra: tuple[str, ...] = ("--insecure",), log_name: str = "",
                    node_config: str = "") -> subprocess.Popen:
    """Start a SuperNode for ``partition_id`` connected to the SuperLink (its log: ``<log_name>.log``, by default
    supernode-<partition id>.log), with ``node_config`` ('key="value" ...') added to its node config."""
    return procs.start(
        log_name or f"supernode-{partition_id}", str(BIN / "flower-supernode"), *extra,
        "--superlink", f"127.0.0.1:{superlink_port}", "--port", str(free_port()),
        "--node-config", f"partition-id={partition_id} num-partitions={num_partitions} {node_config}".strip(),
    )


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process (Linux /proc; empty elsewhere)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def descendant_groups(root: int) -> set[int]:
    """The process groups of ``root`` and all its descendants."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _group) in table.items():
        children.setdefault(ppid, []).append(pid)
    groups, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            groups.add(table[pid][1])
        todo += children.get(pid, [])
    return groups


def end_groups(
    groups: set[int], grace: float = 10.0, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)
) -> None:
    """Send each of ``signals`` to every group in turn, waiting up to ``grace`` seconds for the groups to go
    (Ray's agents ignore SIGTERM, hence the final SIGKILL)."""
    for sig in signals:
        for group in list(groups):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                groups.discard(group)
        deadline = time.time() + grace
        while groups and time.time() < deadline:
            time.sleep(0.2)
            groups = {g for g in groups if any(pg == g for _pp, pg in process_table().values())}
