"""A tiny WarmFed run through `flwr run` in which a client process dies, in round 0 and again in round 2."""


from benchmarks.harness import flwr_run, read_metrics


def test_run_goes_on_when_a_client_process_exits(simulation, tmp_path, shared_cache, tiny_pipeline_dir):
    """Flower's simulation would keep the dead Ray actor and fail every later message; the ServerApp replaces it,
    so the run finishes with the client's domain left out of the synthetic set and its round-2 update lost only."""
    config = {
        "output-dir": str(tmp_path), "run-name": "run", "cache-dir": str(shared_cache), "device": "cpu",
        "data.domains": "mnist,digits", "data.num-clients": 2, "data.max-per-domain": 300,
        "train.rounds": 2, "train.min-fit-clients": 1, "generator.base": str(tiny_pipeline_dir),
        "lora.steps": 2, "lora.batch-size": 8, "synthesis.images-per-class": 4, "synthesis.steps": 2,
        "warmfed.warm-epochs": 1, "faults.kind": "exit", "faults.clients": "1", "faults.rounds": "0,2",
    }
    done = flwr_run(simulation, config, 2, 600)
    run = tmp_path / "run"
    assert (run / "summary.md").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(run)
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    for row in rounds.values():
        assert row["clients_evaluated"] == 2 and row["clients_eval_failed"] == 0
        assert {"global_acc_mnist", "global_acc_digits"} <= set(row)
    assert (rounds[0]["clients_accepted"], rounds[0]["clients_failed"]) == (1, 1)
    assert rounds[0]["synthetic_images"] == 4 * 10
    assert (rounds[1]["clients_ok"], rounds[1]["clients_failed"]) == (2, 0), "the client is back after round 0"
    assert (rounds[2]["clients_ok"], rounds[2]["clients_failed"]) == (1, 1)
    events = metrics["events"]
    left_out = [e for e in events if e["kind"] == "domain_left_out"]
    assert [e["domain"] for e in left_out] == ["digits"] and "ActorDiedError" in left_out[0]["reason"]
    failed = {e["round"]: e for e in events if e["kind"] == "client_failed"}
    assert sorted(failed) == [0, 2] and "ActorDiedError" in failed[2]["reason"]
    assert failed[2]["client"] == "digits"
    assert not [e for e in events if e["kind"] in ("upload_refused", "round_skipped")]
