"""How Flower's Ray backend places simulated clients on GPUs, shown on CPU with GPUs declared to Ray only.

Ray schedules GPUs as logical resources: ``init_args`` num_gpus declares them, ``client_resources`` num_gpus is each
client actor's share, and Ray writes the ids it assigned into the actor's CUDA_VISIBLE_DEVICES. These tests run a
probe ClientApp (not WarmFed) through Flower's simulation engine, configured by the same ``--federation-config``
strings of docs/gpu-and-paper-scale.md, and check the placement its GPU preset relies on (including that GPUs past
``init-args-num-gpus`` stay out of Ray's pool for the server) and what ``resolve_device('auto')`` picks in an actor.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from warmfed_flwr.learning import training
from warmfed_flwr.learning.training import resolve_device

CLIENTS = 4
SLEEP_SECONDS = 2.0
PLAN = {"clients": CLIENTS, "sleeps": (0.0, SLEEP_SECONDS)}
"""What the probe ServerApp (a thread of this process) does: how many nodes, and one round per sleep."""
REPORTS: list[dict] = []


def probe_train(msg, context):
    """Sleep briefly; report pid, times, CUDA_VISIBLE_DEVICES, Ray's GPU ids and resolve_device('auto')."""
    from flwr.app import ConfigRecord, Message, RecordDict

    started = time.time()
    time.sleep(float(msg.content["config"]["sleep"]))
    torch.cuda.is_available = lambda: True  # as on a GPU machine: what would 'auto' pick here?
    import ray

    report = ConfigRecord({
        "pid": os.getpid(), "start": started, "end": time.time(),
        "cvd": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "auto": str(resolve_device("auto")),
    })
    return Message(RecordDict({"report": report}), reply_to=msg)


def probe_main(grid, context):
    """A round per planned sleep (a first round of 0 s lets the actors start); keep the last round's replies."""
    from flwr.app import ConfigRecord, Message, RecordDict

    deadline = time.time() + 60
    while len(nodes := list(grid.get_node_ids())) < PLAN["clients"] and time.time() < deadline:
        time.sleep(0.2)
    for sleep in PLAN["sleeps"]:
        messages = [Message(RecordDict({"config": ConfigRecord({"sleep": sleep})}), dst_node_id=node,
                            message_type="train") for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=120))
    REPORTS.extend(dict(reply.content["report"]) for reply in replies if reply.has_content())


def backend_config(federation_config: str) -> tuple[int, dict]:
    """Supernodes and Ray backend config that ``flwr run --federation-config`` yields (Flower's own parsing)."""
    from flwr.common.config import parse_config_args
    from flwr.simulation.app import _run_simulation_settings
    from flwr.supercore.utils import simulation_config_from_json

    flat = {key.replace("-", "_"): value for key, value in parse_config_args([federation_config]).items()}
    supernodes, _backend, config, _verbose, _ = _run_simulation_settings(simulation_config_from_json(flat))
    return supernodes, config


def simulate(federation_config: str, monkeypatch, sleeps: tuple[float, ...] = (0.0, SLEEP_SECONDS)) -> list[dict]:
    """Run the probe under ``federation_config`` (GPUs declared to Ray, none exists); return the clients' reports."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # Flower's Ray backend rewrites it
    client, server = ClientApp(), ServerApp()
    client.train()(probe_train)
    server.main()(probe_main)
    REPORTS.clear()
    clients, config = backend_config(federation_config)
    monkeypatch.setitem(PLAN, "clients", clients)
    monkeypatch.setitem(PLAN, "sleeps", sleeps)
    run_simulation(server, client, num_supernodes=clients, backend_config=config)
    assert len(REPORTS) == clients, f"{len(REPORTS)} of {clients} clients replied"
    return list(REPORTS)


def most_at_once(reports: list[dict]) -> int:
    """The largest number of clients whose fit intervals overlap at one instant."""
    return max(sum(r["start"] <= other["start"] < r["end"] for r in reports) for other in reports)


def test_half_a_gpu_each_runs_four_clients_at_once_two_per_gpu(monkeypatch):
    reports = simulate("num-supernodes=4 client-resources-num-cpus=1 client-resources-num-gpus=0.5 "
                       "init-args-num-cpus=4 init-args-num-gpus=2", monkeypatch)
    assert most_at_once(reports) == CLIENTS
    assert len({r["pid"] for r in reports}) == CLIENTS
    for r in reports:
        assert r["cvd"] in ("0", "1") and r["gpu_ids"] == [r["cvd"]], r
        assert r["auto"] == "cuda", "an actor holding a GPU share resolves 'auto' to its own cuda:0"
    assert sorted(r["cvd"] for r in reports) == ["0", "0", "1", "1"]


def test_a_whole_gpu_each_runs_at_most_two_clients_at_once_and_leaves_the_last_gpu_out(monkeypatch):
    """Three GPUs visible, two declared to Ray: Ray hands out the first two, so cuda:2 stays the server's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    reports = simulate("num-supernodes=4 client-resources-num-cpus=1 client-resources-num-gpus=1 "
                       "init-args-num-cpus=4 init-args-num-gpus=2", monkeypatch, sleeps=(SLEEP_SECONDS / 2,))
    assert most_at_once(reports) <= 2
    assert len({r["pid"] for r in reports}) <= 2
    assert all(r["cvd"] in ("0", "1") and r["gpu_ids"] == [r["cvd"]] for r in reports), reports


def test_an_actor_without_a_gpu_share_picks_cpu_even_where_ray_leaves_gpus_visible(monkeypatch):
    """Ray 2.55 blanks a zero-GPU actor's CUDA_VISIBLE_DEVICES; with the announced future default
    (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0) it leaves the driver's GPUs visible, and 'auto' must still pick CPU."""
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    reports = simulate("num-supernodes=1 client-resources-num-cpus=1 init-args-num-cpus=1 init-args-num-gpus=2",
                       monkeypatch, sleeps=(0.0,))
    assert all(r["cvd"] == "0,1" and r["gpu_ids"] == [] and r["auto"] == "cpu" for r in reports), reports


@pytest.mark.parametrize(
    ("visible", "cuda_available", "expected"),
    [("0", True, "cuda"), ("3", True, "cuda"), (None, True, "cuda"), ("", True, "cpu"), ("-1", True, "cpu"),
     ("0", False, "cpu"), (None, False, "cpu")],
)
def test_auto_picks_cuda_only_where_a_gpu_is_visible(monkeypatch, visible, cuda_available, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cuda") == torch.device("cuda")


def test_an_actor_without_ray_gpus_picks_cpu_even_when_cuda_is_visible(monkeypatch):
    """With RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 Ray leaves every GPU visible to a zero-GPU actor."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training, "_ray_actor_gpus", lambda: [])
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(training, "_ray_actor_gpus", lambda: [1])
    assert resolve_device("auto") == torch.device("cuda")
