"""Client state across a resume: the snapshot store, the client wrapper, the server naming its checkpoint's round, and
a SIGKILLed WarmFed + DSD `flwr run` resumed to the same personalized metrics as an uninterrupted run."""

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.client import Client
from flwr.common import Code, EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Status

from benchmarks.harness import (
    Processes,
    descendant_groups,
    end_groups,
    flwr_run,
    flwr_run_args,
    read_metrics,
    start_superlink,
)
from clients.base import PERSONAL, POOL, RESUMABLE_STATE
from clients.state import ClientStateStore, PersistentStateClient, client_state_dir, load_arrays, save_arrays, start_run
from strategies.checkpointing import CheckpointingStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import CheckpointError, RunStoppedError
from warmfed_flwr.records.checkpoint import KEEP, Checkpoint, CheckpointStore, RandomState, checkpoint_dir
from warmfed_flwr.wire import protocol

NO_PARAMETERS = Parameters(tensors=[], tensor_type="numpy.ndarray")


def state_of(algo_round: int) -> dict[str, dict[str, np.ndarray]]:
    """Personal weights and a logit pool whose values name ``algo_round``."""
    return {PERSONAL: {"00000": np.full((2, 3), algo_round, dtype=np.float32), "00001": np.arange(3, dtype=np.int64)},
            POOL: {"pool.0": np.full((4, 2), -algo_round, dtype=np.float32)}}


def context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_a_snapshot_round_trips_every_key_name_and_dtype(tmp_path):
    store = ClientStateStore(tmp_path)
    saved = {**state_of(3), "fedbn-local": {"bn.running_mean": np.ones(5, dtype=np.float64)}, "empty": {}}
    assert store.save(3, saved) == tmp_path / "round-0003.npz"
    loaded = store.load(3)
    assert sorted(loaded) == sorted(saved) and loaded["empty"] == {}
    for key, arrays in saved.items():
        assert sorted(loaded[key]) == sorted(arrays)
        for name, value in arrays.items():
            assert loaded[key][name].dtype == value.dtype and np.array_equal(loaded[key][name], value)


def test_only_the_newest_rounds_are_kept_one_more_than_server_checkpoints(tmp_path):
    assert ClientStateStore(tmp_path).keep == KEEP + 1
    store = ClientStateStore(tmp_path, keep=2)
    for algo_round in (1, 2, 5, 3, 4):
        store.save(algo_round, state_of(algo_round))
    assert store.rounds() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0004.npz", "round-0005.npz"]


def test_an_interrupted_write_leaves_the_older_snapshot_and_no_partial_file(tmp_path, monkeypatch):
    store = ClientStateStore(tmp_path)
    store.save(1, state_of(1))

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(2, state_of(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001.npz"]
    assert store.load(1)[PERSONAL]["00000"][0, 0] == 1


def test_a_resume_restores_the_checkpoint_round_and_drops_the_later_one(tmp_path):
    store = ClientStateStore(tmp_path)
    store.save(1, state_of(1))
    store.save(2, state_of(2))  # fitted after the server's last checkpoint (round 1), before the SIGKILL
    ctx = context()
    start_run(ctx, store, resume_from=1)
    assert load_arrays(ctx, PERSONAL)["00000"][0, 0] == 1 and load_arrays(ctx, POOL)["pool.0"][0, 0] == -1
    assert store.rounds() == [1]
    save_arrays(ctx, PERSONAL, {"00000": np.zeros(1)})
    start_run(ctx, store, resume_from=1)
    assert load_arrays(ctx, PERSONAL)["00000"].shape == (1,), "only the run's first message restores"


def test_a_resume_finds_the_newest_snapshot_at_or_before_the_checkpoint(tmp_path):
    store = ClientStateStore(tmp_path)
    store.save(2, state_of(2))  # a client not sampled in rounds 3 and 4
    ctx = context()
    start_run(ctx, store, resume_from=4)
    assert load_arrays(ctx, PERSONAL)["00000"][0, 0] == 2
    later = context()
    start_run(later, ClientStateStore(tmp_path / "never-fitted"), resume_from=4)
    assert load_arrays(later, PERSONAL) is None


def test_a_resume_whose_round_has_no_snapshot_left_stops_instead_of_starting_empty(tmp_path):
    store = ClientStateStore(tmp_path, keep=2)
    for algo_round in (1, 2, 3):
        store.save(algo_round, state_of(algo_round))
    with pytest.raises(CheckpointError, match="client state as of round 1 is gone"):
        start_run(context(), store, resume_from=1)
    assert store.rounds() == [2, 3], "nothing is deleted when the resume is refused"


def test_a_fresh_run_clears_what_an_earlier_run_of_the_name_left(tmp_path):
    store = ClientStateStore(tmp_path)
    store.save(9, state_of(9))
    ctx = context()
    start_run(ctx, store, resume_from=None)
    assert store.rounds() == [] and load_arrays(ctx, PERSONAL) is None


def test_a_corrupt_snapshot_is_a_clear_error_not_an_empty_state(tmp_path):
    store = ClientStateStore(tmp_path)
    path = store.save(2, state_of(2))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"client state snapshot {path} is unreadable .*resume=false"):
        start_run(context(), store, resume_from=2)
    assert path.exists(), "the unreadable snapshot is kept for inspection"
    store.save(2, state_of(2)).rename(tmp_path / "round-0003.npz")  # a snapshot whose name and content disagree
    with pytest.raises(CheckpointError, match="round-0003.npz is unreadable \\(ValueError: format 1 of round 2\\)"):
        store.load(3)


class RoundClient(Client):
    """Keeps its round in ``context.state``, as a personalizing client keeps its personal model."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def fit(self, ins: FitIns) -> FitRes:
        seen = load_arrays(self.ctx, PERSONAL)
        save_arrays(self.ctx, PERSONAL, {"00000": np.array([ins.config[protocol.ROUND]])})
        return FitRes(Status(Code.OK, ""), NO_PARAMETERS, 1, {"seen": -1 if seen is None else int(seen["00000"][0])})

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        seen = load_arrays(self.ctx, PERSONAL)
        return EvaluateRes(Status(Code.OK, ""), 0.0, 1, {"seen": -1 if seen is None else int(seen["00000"][0])})


def test_the_wrapper_snapshots_each_fit_and_a_resumed_run_continues_from_the_checkpoint_round(tmp_path):
    store = ClientStateStore(client_state_dir(tmp_path / "run", "mnist-0"))
    first = context()
    client = PersistentStateClient(RoundClient(first), first, store, RESUMABLE_STATE)
    assert [client.fit(FitIns(NO_PARAMETERS, {protocol.ROUND: r})).metrics["seen"] for r in (1, 2, 3)] == [-1, 1, 2]
    assert store.directory == tmp_path / "run" / "checkpoints" / "clients" / "mnist-0" and store.rounds() == [1, 2, 3]

    resumed = context()  # the server checkpoint holds round 2; the fit of round 3 happened before the SIGKILL
    client = PersistentStateClient(RoundClient(resumed), resumed, store, RESUMABLE_STATE)
    resume = {protocol.RESUME_FROM: 2}
    assert client.evaluate(EvaluateIns(NO_PARAMETERS, resume)).metrics["seen"] == 2
    assert client.fit(FitIns(NO_PARAMETERS, {**resume, protocol.ROUND: 3})).metrics["seen"] == 2
    assert client.fit(FitIns(NO_PARAMETERS, {**resume, protocol.ROUND: 4})).metrics["seen"] == 3


def test_the_wrapper_stops_the_client_in_one_line_on_a_corrupt_snapshot(tmp_path, capsys):
    store = ClientStateStore(tmp_path)
    store.save(1, state_of(1)).write_bytes(b"not a zip")
    ctx = context()
    client = PersistentStateClient(RoundClient(ctx), ctx, store, RESUMABLE_STATE)
    with pytest.raises(RunStoppedError, match="CheckpointError: client state snapshot .*round-0001.npz is unreadable"):
        client.fit(FitIns(NO_PARAMETERS, {protocol.RESUME_FROM: 1, protocol.ROUND: 2}))
    assert "round-0001.npz is unreadable" in capsys.readouterr().err


class OneClientStrategy:
    """The part of a recording strategy that configures rounds: one instruction per round."""

    def configure_fit(self, server_round, parameters, client_manager):
        return [(None, FitIns(NO_PARAMETERS, {protocol.ROUND: server_round - 1}))]

    def configure_evaluate(self, server_round, parameters, client_manager):
        return [(None, EvaluateIns(NO_PARAMETERS, {}))]


def test_a_resumed_server_names_its_checkpoint_round_and_a_fresh_one_names_none(tmp_path):
    checkpoint = Checkpoint(3, 2, [], {}, {}, RandomState.capture())
    resumed = CheckpointingStrategy(OneClientStrategy(), CheckpointStore(tmp_path), checkpoint)
    assert resumed.configure_fit(4, NO_PARAMETERS, None)[0][1].config == {protocol.ROUND: 3, protocol.RESUME_FROM: 2}
    assert resumed.configure_evaluate(4, NO_PARAMETERS, None)[0][1].config == {protocol.RESUME_FROM: 2}
    fresh = CheckpointingStrategy(OneClientStrategy(), CheckpointStore(tmp_path))
    assert protocol.RESUME_FROM not in fresh.configure_fit(1, NO_PARAMETERS, None)[0][1].config
    assert protocol.RESUME_FROM not in fresh.configure_evaluate(1, NO_PARAMETERS, None)[0][1].config


@pytest.mark.parametrize("overrides", [
    {"algorithm": "local"},
    {"personalization.method": "dsd"},
    {"algorithm": "fedavg", "personalization.method": "fedbn"},
    {"algorithm": "fedavg", "personalization.method": "ditto"},
    {"algorithm": "fedavg", "personalization.method": "finetune"},
])
def test_personalized_and_local_runs_may_resume(overrides):
    assert resolve({**overrides, "run-name": "r", "resume": True}).resume is True


def wait_for_client_snapshot(run_directory: Path, algo_round: int, run: subprocess.Popen, log: Path,
                             timeout: float) -> None:
    """Block until some client wrote its state snapshot of ``algo_round`` while ``run`` goes on."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        if list((checkpoint_dir(run_directory) / "clients").glob(f"*/round-{algo_round:04d}.npz")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no client state snapshot of round {algo_round}:\n{log.read_text()[-3000:]}")


def global_accuracy(rounds: list[dict]) -> dict[int, dict[str, float]]:
    """Global pooled and per-domain accuracy per round, at summary.md's precision (percent, 2 decimals)."""
    keys = ["global_acc_pooled", *(f"global_acc_{d}" for d in ("mnist", "digits", "fonts", "mnistm"))]
    return {r["round"]: {k: round(100 * r[k], 2) for k in keys} for r in rounds}


def personal_accuracy(rounds: list[dict]) -> dict[int, dict[str, float]]:
    """Every client's personalized accuracy, and their mean, per round."""
    return {r["round"]: {k: v for k, v in r.items() if k.startswith("personal_acc_") and k != "personal_acc_std"}
            for r in rounds}


def final_client_state(run_directory: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Each client's state snapshot of the last round (3)."""
    return {folder.name: ClientStateStore(folder).load(3)
            for folder in sorted((checkpoint_dir(run_directory) / "clients").iterdir())}


def test_a_killed_dsd_run_resumes_to_the_same_global_and_personalized_metrics(tmp_path_factory, tmp_path, shared_cache,
                                                                  tiny_pipeline_dir):
    config = {"output-dir": str(tmp_path), "cache-dir": str(shared_cache), "device": "cpu",
              "data.max-per-domain": 300, "generator.base": str(tiny_pipeline_dir), "lora.steps": 2,
              "lora.batch-size": 8, "synthesis.images-per-class": 4, "synthesis.steps": 2,
              "warmfed.warm-epochs": 1, "train.rounds": 3, "personalization.method": "dsd",
              "personalization.selector-steps": 5}
    first = Processes(tmp_path_factory.mktemp("flwr-home"))
    try:
        start_superlink(first, simulation=True)
        superlink = first.procs[0]
        done = flwr_run(first, {**config, "run-name": "straight"}, 4, 600)
        assert (tmp_path / "straight" / "summary.md").exists(), done.stdout[-3000:] + done.stderr[-3000:]
        killed = first.start("killed-run", *flwr_run_args({**config, "run-name": "killed"}, 4))
        wait_for_client_snapshot(tmp_path / "killed", 2, killed, first.home / "killed-run.log", 600)
        end_groups(descendant_groups(superlink.pid), grace=0, signals=(signal.SIGKILL,))
    finally:
        first.stop()
    assert not (tmp_path / "killed" / "summary.md").exists(), "the run ended before it was killed"
    checkpointed = CheckpointStore(checkpoint_dir(tmp_path / "killed")).load_newest().algorithm_round
    assert checkpointed == 1, "killed after a client's fit of round 2, before the server's checkpoint of round 2"

    second = Processes(tmp_path_factory.mktemp("flwr-home"))
    try:
        start_superlink(second, simulation=True)
        done = flwr_run(second, {**config, "run-name": "killed", "resume": True}, 4, 600)
    finally:
        second.stop()
    assert (tmp_path / "killed" / "summary.md").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "killed")
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    assert [e["after_round"] for e in resumed["events"] if e["kind"] == "resumed"] == [1]
    assert global_accuracy(resumed["rounds"]) == global_accuracy(straight["rounds"]), "the server side resumes exactly"
    assert resumed["rounds"][2]["bytes_down_per_client"] > straight["rounds"][2]["bytes_down_per_client"], \
        "the synthetic subset is sent again with the first round after the resume"
    expected = personal_accuracy(straight["rounds"])
    assert len(expected[3]) == 5, "four clients and their mean"
    assert personal_accuracy(resumed["rounds"]) == expected
    straight_state, resumed_state = final_client_state(tmp_path / "straight"), final_client_state(tmp_path / "killed")
    assert sorted(straight_state) == ["digits", "fonts", "mnist", "mnistm"] and sorted(resumed_state) == sorted(
        straight_state)
    for client, state in straight_state.items():
        assert sorted(state) == sorted([PERSONAL, POOL])
        for key, arrays in state.items():
            assert all(np.array_equal(arrays[n], resumed_state[client][key][n]) for n in arrays), (client, key)
