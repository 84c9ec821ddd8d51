"""Deployment with TLS and SuperNode authentication: only SuperNodes whose public keys were registered join."""

from collections.abc import Iterator

import pytest

from benchmarks.harness import Processes, flwr_run, read_metrics, start_supernode
from benchmarks.node_auth import online_node_ids, start_authenticated_deployment, write_node_key
from tests.test_app import assert_counts_of_test_splits, client_test_sizes


@pytest.fixture
def tls_deployment(tmp_path_factory) -> Iterator[tuple[Processes, int, set[str]]]:
    """A TLS SuperLink with SuperNode auth and two registered SuperNodes; yields processes, port and node ids."""
    procs = Processes(tmp_path_factory.mktemp("flwr-tls"))
    port, node_ids = start_authenticated_deployment(procs, [0, 1], 2)
    yield procs, port, set(node_ids)
    procs.stop()


def test_registered_supernodes_run_warmfed_over_tls_and_an_unregistered_one_is_refused(
    tls_deployment, tmp_path, shared_cache, tiny_pipeline_dir
):
    """The unregistered SuperNode exits at activation and never comes online; the two registered ones run WarmFed."""
    procs, port, registered_ids = tls_deployment
    intruder_key = procs.home / "intruder"
    write_node_key(intruder_key)
    intruder = start_supernode(procs, port, 2, 3, extra=(
        "--root-certificates", str(procs.home / "ca.crt"), "--auth-supernode-private-key", str(intruder_key)))
    assert intruder.wait(timeout=60) == 1, "Flower exits 1 when the SuperLink does not know the node's key"
    intruder_log = (procs.home / "supernode-2.log").read_text()
    assert "Failed to activate SuperNode" in intruder_log and "Exit Code: 305" in intruder_log
    assert "No SuperNode found with the given public key" in (procs.home / "superlink.log").read_text()
    assert online_node_ids(procs) == registered_ids

    config = {"algorithm": "warmfed", "data.domains": "mnist,digits", "data.num-clients": 2,
              "data.max-per-domain": 300, "train.rounds": 1, "generator.base": str(tiny_pipeline_dir),
              "lora.steps": 2, "lora.batch-size": 8, "synthesis.images-per-class": 4, "synthesis.steps": 2,
              "warmfed.warm-epochs": 1, "device": "cpu", "output-dir": str(tmp_path), "run-name": "tls",
              "cache-dir": str(shared_cache)}
    done = flwr_run(procs, config, None, 600)
    run = tmp_path / "tls"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    rounds = {r["round"]: r for r in read_metrics(run)["rounds"]}
    assert sorted(rounds) == [0, 1]
    assert rounds[0]["clients_accepted"] == 2 and rounds[1]["clients_ok"] == 2
    assert all(rounds[r]["clients_sampled"] == rounds[r]["clients_evaluated"] == 2 for r in rounds)
    sizes = client_test_sizes(config)
    assert set(sizes) == {"mnist", "digits"}
    for row in rounds.values():
        assert_counts_of_test_splits(row, sizes)
