"""The Flower app end to end through `flwr run` on a private simulation SuperLink."""

import re
import statistics
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.harness import flwr_run, read_metrics, run_statuses
from tests.conftest import PROGRESS_SECONDS
from tests.test_tracking import expected as expected_tracking
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import load_clients
from warmfed_flwr.runtime import cache_dir

DOMAINS = ["mnist", "digits", "fonts", "mnistm"]



def tiny(tmp_path: Path, cache: Path, **overrides) -> dict:
    return {"output-dir": str(tmp_path), "run-name": "run", "cache-dir": str(cache), "device": "cpu",
            "data.max-per-domain": 300, "train.local-epochs": 2, **overrides}


def client_test_sizes(run_config: dict) -> dict[str, int]:
    """Each client's test-split size in the run made with ``run_config`` (from the partition cache it filled)."""
    cfg = resolve(run_config)
    return {client.name: len(client.test) for client in load_clients(cfg.data, cfg.seed, cache_dir(cfg)).clients}


def assert_counts_of_test_splits(row: dict, sizes: dict[str, int], kind: str = "global") -> None:
    """Every client's ``kind`` accuracy is a count of right answers on its own test split, and the round's summary
    their test-size-weighted mean (global, pooled) or their plain mean over clients (personal)."""
    accuracies = {name: row[f"{kind}_acc_{name}"] for name in sizes}
    for name, accuracy in accuracies.items():
        assert accuracy * sizes[name] == pytest.approx(round(accuracy * sizes[name]), abs=1e-4), (name, accuracy)
    if kind == "global":
        pooled = sum(accuracies[name] * size for name, size in sizes.items()) / sum(sizes.values())
        assert row["global_acc_pooled"] == pytest.approx(pooled)
    else:
        assert row["personal_acc_mean"] == pytest.approx(statistics.fmean(accuracies.values()))


def test_fedavg_through_flwr_run_writes_results(simulation, tmp_path, shared_cache):
    overrides = {"train.rounds": 2, "tracking.backend": "tensorboard"}
    done = flwr_run(simulation, tiny(tmp_path, shared_cache, algorithm="fedavg", **overrides), 4, 600)
    run = tmp_path / "run"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(run)
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert sorted(rounds) == [1, 2]
    last = rounds[2]
    assert last["clients_ok"] == 4 and last["clients_failed"] == 0
    assert last["global_acc_pooled"] > 0.3, "above chance (0.1) after two rounds"
    assert_counts_of_test_splits(last, client_test_sizes(tiny(tmp_path, shared_cache, algorithm="fedavg")))
    assert last["bytes_up"] == 4 * last["bytes_up_per_client"] > 0
    summary = (run / "summary.md").read_text()
    assert "pooled" in summary and "mnistm" in summary
    assert (run / "accuracy.png").stat().st_size > 1000
    assert (run / "metrics.csv").read_text().startswith("round,")
    assert f"results written to {run}" in done.stdout + done.stderr, "the run's INFO logs must reach the stream"
    assert "algorithm: fedavg" in (run / "config.yaml").read_text()
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    logged = {(event.step, tag): event.value for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}
    assert logged == pytest.approx(expected_tracking(metrics))


def test_bad_config_stops_the_run_with_one_line(simulation, tmp_path, shared_cache):
    done = flwr_run(simulation, tiny(tmp_path, shared_cache, **{"train.rounds": 0}), 4, 300)
    output = done.stdout + done.stderr
    assert "ConfigError: config key 'train.rounds' = 0 must be a positive integer" in output
    assert not (tmp_path / "run").exists()
    assert run_statuses(simulation)[-1] == "finished:failed", "a stopped run must not be recorded as completed"


def test_unknown_override_key_is_refused_before_the_run(simulation, tmp_path, shared_cache):
    """Flower itself refuses keys missing from pyproject (its message does not name the key)."""
    done = flwr_run(simulation, tiny(tmp_path, shared_cache, **{"train.roundz": 2}), 4, 120)
    assert done.returncode != 0
    assert "Invalid run configuration" in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()


def test_tiny_warmfed_with_dsd_through_flwr_run(simulation, tmp_path, shared_cache, tiny_pipeline_dir):
    config = tiny(tmp_path, shared_cache, **{
        "generator.base": str(tiny_pipeline_dir), "lora.steps": 2, "lora.batch-size": 8,
        "synthesis.images-per-class": 4, "synthesis.steps": 2, "warmfed.warm-epochs": 1, "train.rounds": 2,
        "personalization.method": "dsd", "personalization.selector-steps": 10,
    })
    done = flwr_run(simulation, config, 4, 600)
    run = tmp_path / "run"
    assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(run)
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    zero = rounds[0]
    assert zero["clients_accepted"] == 4 and zero["synthetic_images"] == 4 * 10 * 4
    assert zero["bytes_up_per_client"] > 0 and zero["classifier_bytes"] > 0
    sizes = client_test_sizes(config)
    assert set(sizes) == set(DOMAINS)
    for row in rounds.values():
        assert_counts_of_test_splits(row, sizes)
    assert rounds[1]["bytes_down_per_client"] > rounds[2]["bytes_down_per_client"], "subset is sent once"
    assert_counts_of_test_splits(rounds[2], sizes, "personal")
    assert rounds[2]["personal_acc_mean"] > 0.3, "above chance (0.1): trained on each client's own data"
    assert rounds[2]["dsd_share_t1"] == 1.0, "with one pooled round the only teacher is round t-1"
    assert {f"synthetic_{d}.png" for d in DOMAINS} <= {p.name for p in run.iterdir()}
    assert {"client_lora", "synthesis", "warm_start_training", "server_finetune"} <= set(metrics["time_seconds"])
    assert_log_readable(done.stdout + done.stderr, metrics)


def assert_log_readable(log: str, metrics: dict) -> None:
    """The streamed log shows the server's wait on the clients' LoRA fine-tuning every PROGRESS_SECONDS, repeats no
    warning, and names rounds by the algorithm rounds metrics.json records."""
    waited = [int(s) for s in re.findall(r"round 0: waiting for 4 client\(s\) to fine-tune their LoRA adapters: "
                                         r"(\d+) s so far", log)]
    lora_seconds = metrics["time_seconds"]["client_lora"]
    assert lora_seconds >= 2 * PROGRESS_SECONDS, lora_seconds
    assert len(waited) >= lora_seconds // PROGRESS_SECONDS - 1 and waited == sorted(waited), (waited, lora_seconds)
    warnings = [line.strip() for line in log.splitlines() if "warn" in line.lower()]
    repeated = {line for line in warnings if warnings.count(line) > 1}
    assert not repeated, repeated
    recorded = {row["round"] for row in metrics["rounds"]}
    assert {int(r) for r in re.findall(r"\bround (\d+)\b", log)} <= recorded
