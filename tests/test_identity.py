"""train.identity-file binds client names to Flower node ids: a name claimed by any other node is refused, whatever
the arrival order, and the bound node keeps its name. Without the file the first claim of a name wins."""

import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters

from benchmarks.harness import Processes, flwr_run, read_metrics
from benchmarks.node_auth import start_authenticated_deployment
from strategies.baselines import FedAvgStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.trust.identity import claim_refusal, load_identities
from warmfed_flwr.wire import payload, protocol

WEIGHTS = [np.zeros((3, 2), np.float32)]
MNIST_NODE, DIGITS_NODE, SPOOFER = "1111", "2222", "3333"


def upload(node: str, name: str, value: float) -> tuple:
    """A fake ClientProxy with a node id (its cid, as Flower's GridClientProxy has) and its fit result."""
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full((3, 2), value, np.float32)]), 10,
                 {protocol.CLIENT_NAME: name})
    return SimpleNamespace(cid=node, node_id=int(node)), res


def evaluation(node: str, name: str) -> tuple:
    metrics = {protocol.CLIENT_NAME: name, "global_acc": 0.5, "global_loss": 1.0}
    return SimpleNamespace(cid=node, node_id=int(node)), EvaluateRes(Status(Code.OK, ""), 1.0, 10, metrics)


def strategy(tmp_path, identity_file: str = "") -> tuple[FedAvgStrategy, RunRecorder]:
    cfg = resolve({"algorithm": "fedavg", "data.domains": "mnist,digits", "data.num-clients": 2,
                   "train.min-fit-clients": 1, "train.identity-file": identity_file})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    strat = FedAvgStrategy(cfg=cfg, recorder=recorder, num_rounds=2)
    strat.global_schema = payload.weights_schema(WEIGHTS)
    strat.global_weights = WEIGHTS
    return strat, recorder


def identity_file(tmp_path, text: str) -> str:
    path = tmp_path / "identities.yaml"
    path.write_text(text)
    return str(path)


def test_a_spoofed_name_arriving_first_is_refused_and_the_bound_node_keeps_it(tmp_path):
    bound = identity_file(tmp_path, f"mnist: {MNIST_NODE}\ndigits: {DIGITS_NODE}\n")
    strat, recorder = strategy(tmp_path, bound)
    results = [upload(SPOOFER, "mnist", 9.0), upload(MNIST_NODE, "mnist", 1.0), upload(DIGITS_NODE, "digits", 3.0)]
    accepted = strat.screen_fit(1, results, [])
    assert [(u.proxy.cid, u.client) for u in accepted] == [(DIGITS_NODE, "digits"), (MNIST_NODE, "mnist")]
    [refused] = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert refused["client"] == f"node {SPOOFER}" and refused["claimed"] == "mnist"
    assert refused["reason"] == f"node {SPOOFER} claims client 'mnist', which train.identity-file binds to node 1111"
    assert strat.client_names == {MNIST_NODE: "mnist", DIGITS_NODE: "digits"}

    valid = strat.screen_evaluate(1, [evaluation(SPOOFER, "mnist"), evaluation(MNIST_NODE, "mnist")])
    assert [proxy.cid for proxy, _ in valid] == [MNIST_NODE]
    [eval_refused] = [e for e in recorder.events if e["kind"] == "eval_refused"]
    assert eval_refused["client"] == f"node {SPOOFER}" and eval_refused["claimed"] == "mnist"
    assert "binds to node 1111" in eval_refused["reason"]


def test_a_bound_node_claiming_an_unlisted_name_is_refused(tmp_path):
    strat, recorder = strategy(tmp_path, identity_file(tmp_path, json.dumps({"mnist": int(MNIST_NODE)})))
    assert strat.screen_fit(1, [upload(MNIST_NODE, "fonts", 1.0)], []) == []
    assert "'fonts', which train.identity-file does not list" in recorder.events[0]["reason"]


def test_without_an_identity_file_the_first_claim_of_a_name_wins(tmp_path):
    strat, recorder = strategy(tmp_path)
    accepted = strat.screen_fit(1, [upload(SPOOFER, "mnist", 9.0), upload(MNIST_NODE, "mnist", 1.0)], [])
    assert [u.proxy.cid for u in accepted] == [SPOOFER]
    assert "second upload claims to come from client 'mnist'" in recorder.events[0]["reason"]


@pytest.mark.parametrize(("text", "message"), [
    ("- 1111\n", "non-empty mapping"),
    ("mnist: -4\n", "maps to -4, not a node id"),
    ("mnist: abc\n", "maps to 'abc', not a node id"),
    ("mnist: 1111\ndigits: 1111\n", "binds node 1111 to both 'mnist' and 'digits'"),
    ("mnist: [1111\n", "not a readable YAML or JSON file"),
])
def test_a_malformed_identity_file_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match="train.identity-file") as refused:
        load_identities(identity_file(tmp_path, text))
    assert message in str(refused.value)


def test_identity_file_paths_must_exist_and_be_absolute(tmp_path):
    with pytest.raises(ConfigError, match="not a readable YAML"):
        load_identities(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="must be an absolute path"):
        load_identities("identities.yaml")
    assert load_identities("") == {} and claim_refusal({}, "anything", "1") is None
    assert load_identities(identity_file(tmp_path, '{"mnist": "18446744073709551615"}')) == {
        "mnist": "18446744073709551615"}


def test_a_node_claiming_a_name_bound_to_another_registered_node_is_refused_under_supernode_auth(
    tmp_path_factory, tmp_path, shared_cache
):
    """Two registered SuperNodes run partition 0 (both say they are 'mnist'); the identity file binds 'mnist' to the
    first one's node id (as `flwr supernode register` printed it). The other one's upload and evaluation are refused:
    the node ids the strategy sees are the authenticated, registered ones."""
    procs = Processes(tmp_path_factory.mktemp("flwr-identity"))
    try:
        _, node_ids = start_authenticated_deployment(procs, [0, 0], 2)
        bound, spoofer = node_ids
        config = {"algorithm": "fedavg", "train.rounds": 1, "data.domains": "mnist,digits", "data.num-clients": 2,
                  "data.max-per-domain": 100, "train.min-fit-clients": 1, "device": "cpu",
                  "train.identity-file": identity_file(tmp_path, f"mnist: {bound}\n"), "output-dir": str(tmp_path),
                  "run-name": "identity", "cache-dir": str(shared_cache)}
        done: subprocess.CompletedProcess = flwr_run(procs, config, None, 300)
    finally:
        procs.stop()
    run = tmp_path / "identity"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(run)
    [round_one] = metrics["rounds"]
    assert round_one["clients_sampled"] == 2 and round_one["clients_ok"] == round_one["clients_evaluated"] == 1
    refusals = {(e["kind"], e["client"]) for e in metrics["events"]}
    assert refusals == {("upload_refused", f"node {spoofer}"), ("eval_refused", f"node {spoofer}")}, metrics["events"]
    assert all(f"binds to node {bound}" in e["reason"] for e in metrics["events"])
