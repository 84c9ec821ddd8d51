"""tracking.backend: what metrics.json holds, read back from TensorBoard's event files and MLflow's store."""

import json
import sys
from pathlib import Path

import pytest

from warmfed_flwr.errors import ConfigError
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.records.tracking import TIME_PREFIX, open_tracker, scalars, tracking_uri

ROUNDS = {0: {"bytes_up": 4096, "synthetic_quality_mnist": 0.625},
          1: {"global_acc_pooled": 0.5, "bytes_up": 800, "bytes_down": 1600, "train_loss": float("nan")},
          2: {"global_acc_pooled": 0.75, "bytes_up": 800, "bytes_down": 1600, "clients_ok": 4}}


def record_a_run(directory: Path, backend: str) -> dict:
    """A three-round run recorded with ``backend``; its metrics.json."""
    recorder = RunRecorder(directory, {"algorithm": "warmfed", "seed": 3, "tracking.backend": backend})
    for server_round, metrics in ROUNDS.items():
        recorder.record_round(server_round, metrics)
        recorder.add_time("client_rounds", 1.5)
    recorder.record_round(2, {"global_acc_pooled": 0.8})  # a value changed after it was first sent
    recorder.finish()
    return json.loads((directory / "metrics.json").read_text())


def expected(metrics: dict) -> dict[tuple[int, str], float]:
    """metrics.json's numbers by (round, key): rounds at their own, stage times at the last round."""
    found = {(row["round"], key): value for row in metrics["rounds"] for key, value in scalars(row).items()}
    last = metrics["rounds"][-1]["round"]
    found.update({(last, TIME_PREFIX + stage): seconds for stage, seconds in metrics["time_seconds"].items()})
    return found


def test_tensorboard_events_hold_metrics_json(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    metrics = record_a_run(tmp_path / "run-a", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run-a" / "tensorboard")).Reload()
    logged = {(event.step, tag): event.value for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}
    assert logged == pytest.approx(expected(metrics))
    assert [event.value for event in events.Scalars("global_acc_pooled")] == pytest.approx([0.5, 0.75, 0.8])
    hparams = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    params = hparams.session_start_info.hparams
    assert params["algorithm"].string_value == "warmfed" and params["seed"].number_value == 3
    assert events.Tensors("run_name/text_summary")[0].tensor_proto.string_val == [b"run-a"]


def test_mlflow_run_holds_metrics_json(tmp_path):
    from mlflow.tracking import MlflowClient

    metrics = record_a_run(tmp_path / "run-b", "mlflow")
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path / "run-b"))
    [run] = client.search_runs([client.get_experiment_by_name("warmfed").experiment_id])
    assert run.info.run_name == "run-b" and run.info.status == "FINISHED"
    assert run.data.params == {"algorithm": "warmfed", "seed": "3", "tracking.backend": "mlflow"}
    history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    logged = {(metric.step, key): metric.value for key, metrics in history.items() for metric in metrics}
    assert logged == pytest.approx(expected(metrics))


def test_no_backend_writes_no_store(tmp_path):
    record_a_run(tmp_path / "run-c", "none")
    assert sorted(p.name for p in (tmp_path / "run-c").iterdir()) == [
        "accuracy.png", "config.yaml", "metrics.csv", "metrics.json", "summary.md"]


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)
    hint = rf"'tracking.backend' = '{backend}' needs the package '{backend}': pip install -e \"\.\[tracking\]\""
    with pytest.raises(ConfigError, match=hint):
        open_tracker(backend, tmp_path, {})
