"""A vanished client never stalls a run: every round waits at most train.round-timeout for the expected clients,
then goes on with those connected when train.min-fit-clients are, and stops in one line when fewer are.

The unit tests drive the strategies with Flower's own SimpleClientManager (its real, condition-variable wait) holding
fake client proxies; the deployment test kills a SuperNode of a real SuperLink mid-run."""

import json
import os
import signal
import subprocess
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server import SimpleClientManager

from benchmarks.harness import (
    ROOT,
    Processes,
    flwr_run_args,
    read_metrics,
    run_statuses,
    start_superlink,
    start_supernode,
    wait_for_round,
)
from benchmarks.node_auth import wait_until_count_online
from strategies.availability import ClientWait
from strategies.baselines import FedAvgStrategy
from strategies.warmfed import WarmFedStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import RunStoppedError
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.wire import protocol

PARAMETERS = ndarrays_to_parameters([np.zeros((3, 2), np.float32)])
NAMES = {"n1": "mnist", "n2": "digits", "n3": "fonts"}
THREE_CLIENTS = {"data.domains": "mnist,digits,fonts", "data.num-clients": 3}


def manager_with(*cids: str) -> SimpleClientManager:
    manager = SimpleClientManager()
    for cid in cids:
        manager.register(SimpleNamespace(cid=cid))
    return manager


def fedavg(tmp_path, timeout: float, min_fit: int = 2) -> tuple[FedAvgStrategy, RunRecorder]:
    cfg = resolve({"algorithm": "fedavg", **THREE_CLIENTS, "train.min-fit-clients": min_fit,
                   "train.round-timeout": timeout})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    return FedAvgStrategy(cfg=cfg, recorder=recorder, num_rounds=3), recorder


def missing_events(recorder: RunRecorder) -> list[dict]:
    return [e for e in recorder.events if e["kind"] == "clients_missing"]


def test_a_round_goes_on_with_the_connected_clients_once_the_timeout_runs_out(tmp_path):
    strat, recorder = fedavg(tmp_path, timeout=0.5)
    strat.client_names.update(NAMES)  # all three answered an earlier round; n3 has vanished since
    started = time.perf_counter()
    pairs = strat.configure_fit(2, PARAMETERS, manager_with("n1", "n2"))
    waited = time.perf_counter() - started
    assert sorted(client.cid for client, _ in pairs) == ["n1", "n2"]
    assert 0.4 < waited < 5, "waits the round timeout for the third client, not Flower's day"
    [event] = missing_events(recorder)
    assert event["round"] == 2 and event["stage"] == "training"
    assert event["missing"] == 1 and event["available"] == 2 and event["clients"] == ["fonts"]
    assert "train.round-timeout = 0.5 s" in event["reason"]

    started = time.perf_counter()
    assert len(strat.configure_evaluate(2, PARAMETERS, manager_with("n1", "n2"))) == 2
    assert len(strat.configure_fit(3, PARAMETERS, manager_with("n1", "n2"))) == 2
    assert time.perf_counter() - started < 0.4, "a client written off is not waited for again"
    assert len(missing_events(recorder)) == 1


def test_a_client_that_connects_within_the_timeout_is_waited_for(tmp_path):
    strat, recorder = fedavg(tmp_path, timeout=30)
    manager = manager_with("n1", "n2")
    threading.Timer(0.3, manager.register, [SimpleNamespace(cid="n3")]).start()
    started = time.perf_counter()
    pairs = strat.configure_fit(1, PARAMETERS, manager)
    assert sorted(client.cid for client, _ in pairs) == ["n1", "n2", "n3"]
    assert time.perf_counter() - started < 10 and not missing_events(recorder)


def test_fewer_clients_than_min_fit_stop_the_run_in_one_line(tmp_path, capsys):
    strat, recorder = fedavg(tmp_path, timeout=0.2)
    strat.client_names.update(NAMES)
    with pytest.raises(RunStoppedError) as stopped:
        strat.configure_fit(2, PARAMETERS, manager_with("n1"))
    message = str(stopped.value)
    assert "1 of 3 clients connected" in message and "train.round-timeout = 0.2 s" in message
    assert "train.min-fit-clients = 2" in message and "\n" not in message
    assert message in capsys.readouterr().err
    events = json.loads((recorder.directory / "metrics.json").read_text())["events"]
    assert [(e["kind"], e["missing"], e["clients"]) for e in events] == [("clients_missing", 2, ["digits", "fonts"])]


def test_round_zero_asks_the_connected_clients_once_the_timeout_runs_out(tmp_path):
    cfg = resolve({"algorithm": "warmfed", **THREE_CLIENTS, "train.min-fit-clients": 2, "train.round-timeout": 0.3})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    warm_start = SimpleNamespace(upload_schema=lambda: {protocol.EMBEDDINGS: ((3, 4, 8), "float32")})
    strat = WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=2, warm_start=warm_start)
    pairs = strat.configure_fit(1, PARAMETERS, manager_with("n1", "n2"))
    assert sorted(client.cid for client, _ in pairs) == ["n1", "n2"]
    assert all(ins.config[protocol.STAGE] == protocol.STAGE_ROUND0_UPLOAD for _, ins in pairs)
    [event] = missing_events(recorder)
    assert (event["round"], event["stage"], event["missing"], event["clients"]) == (0, "round-0 upload", 1, [])
    with pytest.raises(RunStoppedError, match="round 0 .round-0 upload.: 1 of 3 clients connected"):
        WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=2, warm_start=warm_start).configure_fit(
            1, PARAMETERS, manager_with("n1"))


def test_clients_that_come_back_are_waited_for_again():
    wait = ClientWait(total=3, needed=2, timeout=0.1)
    wait.settle(wait.wait(manager_with("n1", "n2")), "round 1 (training)")
    assert wait.expected == 2
    wait.settle(wait.wait(manager_with("n1", "n2", "n3", "n4")), "round 2 (training)")
    assert wait.expected == 3, "back to train.min-available (data.num-clients), never above"
    assert ClientWait(total=3, needed=2, timeout=None).timeout is None


@pytest.fixture
def three_supernodes(tmp_path_factory):
    procs = Processes(tmp_path_factory.mktemp("flwr-vanish"))
    port = start_superlink(procs, simulation=False)
    nodes = [start_supernode(procs, port, partition_id, 3) for partition_id in range(3)]
    wait_until_count_online(procs, 3)
    yield procs, nodes
    procs.stop()


def test_a_supernode_killed_after_round_one_leaves_the_run_to_the_others(three_supernodes, tmp_path, shared_cache):
    """SIGKILL one of three SuperNodes once round 1 is evaluated: its messages fail (the SuperLink's node-unavailable
    reply once its heartbeat lapses, about 60 s), the first round stage after the SuperLink dropped it waits
    train.round-timeout for it once, and the run finishes with the two others.

    The round timeout is generous because every message starts a ClientApp process (torch imports): on two busy
    cores that took over 30 s, and a reply later than the timeout counts as a failure."""
    procs, nodes = three_supernodes
    config = {"algorithm": "fedavg", "train.rounds": 3, "data.domains": "mnist,digits,fonts", "data.num-clients": 3,
              "data.max-per-domain": 100, "train.local-epochs": 1, "train.min-fit-clients": 2,
              "train.round-timeout": 120, "output-dir": str(tmp_path), "run-name": "vanish",
              "cache-dir": str(shared_cache), "device": "cpu"}
    with (procs.home / "run.log").open("w") as log:
        run = subprocess.Popen(flwr_run_args(config, None), env=procs.env, cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            wait_for_round(str(tmp_path / "vanish" / "metrics.json"), run, 1, 600)
            os.killpg(nodes[2].pid, signal.SIGKILL)
            run.wait(timeout=900)
        finally:
            if run.poll() is None:
                run.kill()
    output = (procs.home / "run.log").read_text()[-3000:]
    assert run.returncode == 0, output
    assert run_statuses(procs) == ["finished:completed"]
    metrics = read_metrics(tmp_path / "vanish")
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert sorted(rounds) == [1, 2, 3], output
    assert rounds[1]["clients_ok"] == rounds[1]["clients_evaluated"] == 3
    assert rounds[3]["clients_ok"] == rounds[3]["clients_evaluated"] == 2
    assert "global_acc_fonts" in rounds[1] and "global_acc_fonts" not in rounds[3]
    missing = [e for e in metrics["events"] if e["kind"] == "clients_missing"]
    assert [(e["missing"], e["available"], e["clients"]) for e in missing] == [(1, 2, ["fonts"])], metrics["events"]
