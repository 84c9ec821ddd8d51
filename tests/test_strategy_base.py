"""Rounds >= 1 through the strategy's aggregate_fit, without a Flower run: hostile uploads are refused, the round
goes on with the others, and too few valid uploads keep the previous global model."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays

from strategies.baselines import FedAvgStrategy
from strategies.warmfed import WarmFedStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.trust import faults
from warmfed_flwr.wire import payload, protocol

GLOBAL = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32), np.array(0, np.int64)]


def weights(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.full(4, value, np.float32), np.array(3, np.int64)]


def fit_res(arrays: list[np.ndarray], client: str, num_examples: int = 10) -> tuple:
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {protocol.CLIENT_NAME: client,
                                                                                     "train_loss": 0.5})
    return SimpleNamespace(cid=f"node-{client}"), res


def strategy(tmp_path, cls=FedAvgStrategy, **overrides):
    cfg = resolve({"algorithm": "fedavg", "train.min-fit-clients": 1, "train.max-client-examples": 1000,
                   **overrides})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    no_finetune = SimpleNamespace(finetune=lambda w, _round, _clients=None: w)
    extra = {"warm_start": no_finetune} if cls is WarmFedStrategy else {}
    strat = cls(cfg=cfg, recorder=recorder, num_rounds=3, **extra)
    strat.global_schema = payload.weights_schema(GLOBAL)
    strat.sampled = ["node-good", "node-bad"]
    return strat, recorder


def hostile(case: str) -> tuple:
    if case in ("nan", "wrong-shape", "extra-key", "oversize"):
        cfg = resolve({"faults.kind": case, "faults.clients": "1", "synthesis.max-upload-mb": 0.01})
        return fit_res(faults.inject(cfg, 1, 2, weights(9.0), 10)[0], "bad")
    if case == "inf":
        arrays = weights(9.0)
        arrays[1][0] = np.inf
        return fit_res(arrays, "bad")
    if case == "wrong-dtype":
        return fit_res([a.astype(np.float64) if a.dtype.kind == "f" else a for a in weights(9.0)], "bad")
    if case == "missing-array":
        return fit_res(weights(9.0)[:2], "bad")
    if case == "pickled":
        proxy, res = fit_res(weights(9.0), "bad")
        res.parameters = Parameters(tensors=[b"\x80\x04not a numpy file"], tensor_type="numpy.ndarray")
        return proxy, res
    if case == "duplicate-name":
        return fit_res(weights(9.0), "good")
    examples = {"absurd-examples": 10**12, "negative-examples": -5, "zero-examples": 0}[case]
    return fit_res(weights(9.0), "bad", examples)


CASES = {"nan": "NaN", "inf": "NaN or Inf", "wrong-shape": "shape", "extra-key": "has 4 arrays",
         "oversize": "has 4 arrays", "wrong-dtype": "dtype float64", "missing-array": "has 2 arrays",
         "pickled": "pickled", "duplicate-name": "second upload", "absurd-examples": "1000000000000 training examples",
         "negative-examples": "-5 training examples", "zero-examples": "0 training examples"}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cls", [FedAvgStrategy, WarmFedStrategy])
def test_hostile_upload_is_refused_and_the_round_goes_on(tmp_path, case, cls):
    strat, recorder = strategy(tmp_path, cls)
    parameters, _ = strat.aggregate_fit(3, [fit_res(weights(1.0), "good"), hostile(case)], [])
    assert parameters is not None
    assert all(np.array_equal(a, b) for a, b in zip(parameters_to_ndarrays(parameters), weights(1.0), strict=True))
    refused = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert len(refused) == 1 and refused[0]["round"] == strat.algorithm_round(3)
    assert refused[0]["client"] == ("good" if case == "duplicate-name" else "bad")
    assert CASES[case] in refused[0]["reason"] and "\n" not in refused[0]["reason"]
    row = recorder.rounds[-1]
    assert (row["clients_ok"], row["clients_refused"], row["clients_failed"]) == (1, 1, 0)
    assert row["bytes_up"] == row["bytes_up_per_client"], "only accepted uploads count"


@pytest.mark.parametrize("cls", [FedAvgStrategy, WarmFedStrategy])
def test_too_few_valid_uploads_keep_the_previous_model(tmp_path, cls):
    strat, recorder = strategy(tmp_path, cls, **{"train.min-fit-clients": 2})
    parameters, _ = strat.aggregate_fit(2, [fit_res(weights(1.0), "good"), hostile("nan")], [])
    assert parameters is None, "Flower keeps the previous global model when aggregate_fit returns None"
    skipped = [e for e in recorder.events if e["kind"] == "round_skipped"]
    assert len(skipped) == 1 and "fewer than train.min-fit-clients = 2" in skipped[0]["reason"]
    assert recorder.rounds[-1]["model_kept"] is True


def test_enough_valid_uploads_average_them(tmp_path):
    strat, recorder = strategy(tmp_path, **{"train.min-fit-clients": 2})
    results = [fit_res(weights(1.0), "good", 10), fit_res(weights(4.0), "other", 30), hostile("nan")]
    parameters, _ = strat.aggregate_fit(2, results, [])
    assert np.allclose(parameters_to_ndarrays(parameters)[0], 3.25)
    assert "model_kept" not in recorder.rounds[-1]


def test_a_failure_names_the_client_that_sent_nothing(tmp_path):
    strat, recorder = strategy(tmp_path)
    strat.client_names["node-bad"] = "digits"
    strat.aggregate_fit(2, [fit_res(weights(1.0), "good")], [RuntimeError("Message contains an Error\n(timeout)")])
    failed = [e for e in recorder.events if e["kind"] == "client_failed"]
    assert failed == [{"kind": "client_failed", "round": 2, "client": "digits",
                       "reason": "Message contains an Error (timeout)"}]
    assert recorder.rounds[-1]["clients_failed"] == 1


def test_non_numeric_metrics_do_not_break_the_round(tmp_path):
    strat, recorder = strategy(tmp_path)
    proxy, res = fit_res(weights(1.0), "good")
    res.metrics.update({"train_loss": "lots", "dsd_share_t1": b"x", "dsd_share_t2": float("nan")})
    assert strat.aggregate_fit(2, [(proxy, res)], [])[0] is not None
    assert not {"train_loss", "dsd_share_t1", "dsd_share_t2"} & recorder.rounds[-1].keys()


def test_the_share_of_dp_clipped_uploads_is_recorded(tmp_path):
    strat, recorder = strategy(tmp_path, **{"train.min-fit-clients": 2})
    results = [fit_res(weights(1.0), "good", 10), fit_res(weights(4.0), "other", 30)]
    results[0][1].metrics["dp_clipped"] = 1.0
    results[1][1].metrics["dp_clipped"] = 0.0
    strat.aggregate_fit(2, results, [])
    assert recorder.rounds[-1]["dp_clipped"] == 0.5


def test_metrics_file_is_strict_json(tmp_path):
    recorder = RunRecorder(tmp_path, {"seed": 0})
    recorder.record_round(1, {"global_acc_pooled": float("nan"), "personal_acc_mean": np.float32(0.5)})
    text = (tmp_path / "metrics.json").read_text()
    row = json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in metrics.json"))["rounds"][0]
    assert row == {"round": 1, "global_acc_pooled": None, "personal_acc_mean": 0.5}


def eval_res(client: object, num_examples: object = 20, **metrics) -> tuple:
    res = EvaluateRes(Status(Code.OK, ""), 0.3, num_examples, {protocol.CLIENT_NAME: client, **metrics})
    return SimpleNamespace(cid=f"node-{client}"), res


@pytest.mark.parametrize("hostile_report", [
    eval_res("bad", global_acc=7.0, global_loss=0.1),
    eval_res("bad", global_acc=float("nan"), global_loss=0.1),
    eval_res("bad", global_acc=0.9, global_loss=-1.0),
    eval_res("bad", global_acc=0.9),
    eval_res("bad", personal_acc="all of them"),
    eval_res("bad", num_examples=10**9, global_acc=0.9, global_loss=0.1),
    eval_res("bad\x1b[31m" * 20, global_acc=0.9, global_loss=0.1),
    eval_res(b"bad", global_acc=0.9, global_loss=0.1),
    eval_res("good", global_acc=0.0, global_loss=0.1),
], ids=["acc>1", "nan-acc", "negative-loss", "acc-without-loss", "text-acc", "absurd-examples", "escape-name",
        "bytes-name", "duplicate-name"])
def test_malformed_evaluation_is_refused_and_the_others_are_recorded(tmp_path, hostile_report):
    strat, recorder = strategy(tmp_path)
    good = eval_res("good", global_acc=0.8, global_loss=0.4, personal_acc=0.9)
    assert strat.aggregate_evaluate(2, [good, hostile_report], []) == (None, {}), "the run record holds the round"
    metrics = next(row for row in recorder.rounds if row["round"] == 2)
    assert metrics["global_acc_pooled"] == pytest.approx(0.8)
    assert metrics["personal_acc_mean"] == pytest.approx(0.9)
    assert metrics["clients_evaluated"] == 1 and metrics["clients_eval_refused"] == 1
    refused = [e for e in recorder.events if e["kind"] == "eval_refused"]
    assert len(refused) == 1 and refused[0]["round"] == 2
    assert not any(key.startswith("global_acc_bad") for key in recorder.rounds[-1])


def test_average_does_not_depend_on_arrival_order(tmp_path):
    uploads = [fit_res(weights(value), name) for value, name in ((1e8, "a"), (1.0, "b"), (-1e8, "c"))]
    averages = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        strat, _ = strategy(tmp_path / str(order))
        strat.sampled = [proxy.cid for proxy, _ in uploads]
        averages.append(parameters_to_ndarrays(strat.aggregate_fit(2, [uploads[i] for i in order], [])[0]))
    assert all(np.array_equal(a, b) for other in averages[1:] for a, b in zip(averages[0], other, strict=True))


@pytest.mark.parametrize("cls", [FedAvgStrategy, WarmFedStrategy])
def test_client_compute_seconds_sum_and_max_over_the_clients_that_answered(tmp_path, cls):
    strat, recorder = strategy(tmp_path, cls)
    answered = [fit_res(weights(1.0), "good"), fit_res(weights(2.0), "other"), hostile("nan"),
                fit_res(weights(3.0), "silent-about-time"), fit_res(weights(4.0), "liar")]
    for (_, res), seconds in zip(answered, [1.5, 2.5, 4.0, None, float("nan")], strict=True):
        if seconds is not None:
            res.metrics[protocol.COMPUTE_SECONDS] = seconds
    strat.aggregate_fit(2, answered, [])
    row = recorder.rounds[-1]
    assert row["clients_refused"] == 1, "the refused upload's compute time still counts"
    assert (row["client_compute_seconds_sum"], row["client_compute_seconds_max"]) == (8.0, 4.0)


def test_no_compute_seconds_reported_records_none(tmp_path):
    strat, recorder = strategy(tmp_path)
    strat.aggregate_fit(2, [fit_res(weights(1.0), "good")], [])
    assert not {"client_compute_seconds_sum", "client_compute_seconds_max"} & recorder.rounds[-1].keys()


def test_evaluation_compute_seconds_are_summed_over_the_accepted_reports(tmp_path):
    strat, recorder = strategy(tmp_path)
    reports = [eval_res("a", global_acc=0.8, global_loss=0.4, **{protocol.COMPUTE_SECONDS: 0.5}),
               eval_res("b", global_acc=0.6, global_loss=0.4, **{protocol.COMPUTE_SECONDS: 1.5}),
               eval_res("c", global_acc=7.0, global_loss=0.4, **{protocol.COMPUTE_SECONDS: 9.0})]
    strat.aggregate_evaluate(2, reports, [])
    row = recorder.rounds[-1]
    assert (row["client_eval_compute_seconds_sum"], row["client_eval_compute_seconds_max"]) == (2.0, 1.5)


def test_round_records_do_not_depend_on_arrival_order(tmp_path):
    """Float sums over clients (pooled accuracy, mean train loss) run in client-name order: 0.1 + 0.2 + 0.3 and
    0.3 + 0.2 + 0.1 differ in their last bit."""
    assert 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1
    values = {"a": 0.1, "b": 0.2, "c": 0.3}
    uploads = []
    for name, value in values.items():
        proxy, res = fit_res(weights(1.0), name)
        res.metrics["train_loss"] = value
        uploads.append((proxy, res))
    reports = [eval_res(name, 1, global_acc=value, global_loss=value, personal_acc=value)
               for name, value in values.items()]
    rows = []
    for order in ([0, 1, 2], [2, 1, 0]):
        strat, recorder = strategy(tmp_path / str(order))
        strat.sampled = [proxy.cid for proxy, _ in uploads]
        strat.aggregate_fit(2, [uploads[i] for i in order], [])
        strat.aggregate_evaluate(2, [reports[i] for i in order], [])
        rows.append({k: v for k, v in recorder.rounds[-1].items() if "seconds" not in k})
    assert rows[0] == rows[1]
    assert rows[0]["global_acc_pooled"] == rows[0]["train_loss"] == (0.1 + 0.2 + 0.3) / 3, "summed a, b, c"
