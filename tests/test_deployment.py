"""The same ClientApp under Flower's deployment engine: a SuperLink and two SuperNodes on loopback."""

import pytest

from benchmarks.harness import Processes, flwr_run, read_metrics, start_superlink, start_supernode


@pytest.fixture
def deployment(tmp_path_factory):
    procs = Processes(tmp_path_factory.mktemp("flwr-deploy"))
    port = start_superlink(procs, simulation=False)
    for partition_id in range(2):
        start_supernode(procs, port, partition_id, 2)
    yield procs
    procs.stop()


def test_two_fedavg_rounds_with_dsd_on_two_supernodes(deployment, tmp_path, shared_cache):
    """Two rounds; DSD's logit pool must survive in each SuperNode's context.state from round 1 to round 2."""
    config = {"algorithm": "fedavg", "train.rounds": 2, "data.domains": "mnist,digits", "data.num-clients": 2,
              "data.max-per-domain": 300, "train.local-epochs": 2, "personalization.method": "dsd",
              "personalization.selector-steps": 10, "output-dir": str(tmp_path), "run-name": "deploy",
              "cache-dir": str(shared_cache), "device": "cpu"}
    done = flwr_run(deployment, config, None, 600)
    run = tmp_path / "deploy"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    rounds = {r["round"]: r for r in read_metrics(run)["rounds"]}
    assert sorted(rounds) == [1, 2]
    assert rounds[2]["clients_ok"] == 2
    assert {"global_acc_mnist", "global_acc_digits"} <= set(rounds[2])
    assert 0.2 < rounds[2]["global_acc_pooled"] <= 1.0
    assert "dsd_share_t1" not in rounds[1], "round 1 starts with an empty pool: plain cross-entropy"
    assert rounds[2]["dsd_share_t1"] == 1.0, "round 2 distils from the pool kept in state since round 1"
    assert {"personal_acc_mnist", "personal_acc_digits"} <= set(rounds[2])
