"""The fault-injection hook: which client and round it hits, and what each kind does to a client or its upload."""

import numpy as np
import pytest

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import PayloadError
from warmfed_flwr.trust import faults
from warmfed_flwr.wire import payload
from warmfed_flwr.wire.updates import update_norm

WEIGHTS = [np.ones((3, 2), np.float32), np.zeros(4, np.float32), np.array(7, np.int64)]
NAMED = {"embeddings": np.ones((2, 4), np.float32), "adapter.a": np.ones((4, 2), np.float32)}


def config(kind: str, rounds: str = "2", **overrides):
    return resolve({"faults.kind": kind, "faults.clients": "1", "faults.rounds": rounds, **overrides})


def test_only_the_configured_clients_and_rounds_misbehave():
    cfg = config("raise", rounds="0,2")
    assert [cfg.faults.hits(1, r) for r in range(4)] == [True, False, True, False]
    assert not cfg.faults.hits(0, 2)
    assert all(config("raise", rounds="").faults.hits(1, r) for r in range(4))
    upload, examples = faults.inject(cfg, 0, 2, WEIGHTS, 10)
    assert upload is WEIGHTS and examples == 10


def test_raise_names_the_fault_client_and_round():
    with pytest.raises(faults.InjectedFaultError, match=r"injected fault 'raise' \(client 1, round 2\)"):
        faults.inject(config("raise"), 1, 2, WEIGHTS, 10)


def test_hang_sleeps_then_answers(monkeypatch):
    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    upload, examples = faults.inject(config("hang", **{"faults.hang-seconds": 42.0}), 1, 2, WEIGHTS, 10)
    assert slept == [42.0] and upload is WEIGHTS and examples == 10


def test_exit_ends_the_process(monkeypatch):
    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(faults.os, "_exit", fake_exit)
    with pytest.raises(SystemExit) as info:
        faults.inject(config("exit"), 1, 2, WEIGHTS, 10)
    assert info.value.code == faults.EXIT_CODE


def test_absurd_examples_keeps_the_upload():
    upload, examples = faults.inject(config("absurd-examples"), 1, 2, WEIGHTS, 10)
    assert upload is WEIGHTS and examples == faults.ABSURD_EXAMPLES
    with pytest.raises(PayloadError, match="claims 1000000000000 training examples"):
        payload.validate_num_examples(examples, 1_000_000, "c1")


CORRUPTIONS = {"nan": "NaN", "wrong-shape": "shape", "extra-key": "arrays", "oversize": "arrays"}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_weights_are_refused_by_validation(kind):
    upload, _ = faults.inject(config(kind, **{"synthesis.max-upload-mb": 0.001}), 1, 2, WEIGHTS, 10)
    assert upload is not WEIGHTS and np.array_equal(WEIGHTS[0], np.ones((3, 2)))
    if kind == "oversize":
        assert payload.nbytes(upload) > 0.001 * 2**20
    with pytest.raises(PayloadError, match=CORRUPTIONS[kind]):
        payload.validate_weights(upload, payload.weights_schema(WEIGHTS), "c1")


BUNDLE_CORRUPTIONS = {"nan": "NaN", "wrong-shape": "shape", "extra-key": "unexpected", "oversize": "over the limit"}


@pytest.mark.parametrize("kind", sorted(BUNDLE_CORRUPTIONS))
def test_corrupted_bundles_are_refused_by_validation(kind):
    upload, _ = faults.inject(config(kind, rounds="0", **{"synthesis.max-upload-mb": 0.001}), 1, 0, NAMED, 10)
    schema = {name: (a.shape, a.dtype.name) for name, a in NAMED.items()}
    decoded = payload.decode(payload.encode(upload), "c1")
    with pytest.raises(PayloadError, match=BUNDLE_CORRUPTIONS[kind]):
        payload.validate(decoded, schema, "c1", int(0.001 * 2**20))


@pytest.mark.parametrize("count", [0, -5, 10**12, 2.5, True, "7"])
def test_example_counts_outside_the_range_are_refused(count):
    with pytest.raises(PayloadError, match="training examples"):
        payload.validate_num_examples(count, 1000, "c1")
    payload.validate_num_examples(1000, 1000, "c1")


GLOBAL = [np.full((3, 2), 0.5, np.float32), np.full(4, 2.0, np.float32), np.array(5, np.int64)]


@pytest.mark.parametrize(("kind", "factor"), [("scale", 1e3), ("sign-flip", -10.0)])
def test_update_faults_scale_the_update_against_the_received_global_model(kind, factor):
    upload, examples = faults.inject(config(kind), 1, 2, WEIGHTS, 10, GLOBAL)
    assert examples == 10
    for attacked, honest, received in zip(upload[:2], WEIGHTS[:2], GLOBAL[:2], strict=True):
        assert attacked.dtype == honest.dtype
        np.testing.assert_allclose(attacked - received, factor * (honest - received), rtol=1e-6)
    assert upload[2] == WEIGHTS[2] and upload[2].dtype == np.int64, "counters are no update direction"
    assert update_norm(upload, GLOBAL) == pytest.approx(abs(factor) * update_norm(WEIGHTS, GLOBAL))
    assert np.array_equal(WEIGHTS[0], np.ones((3, 2))), "the client's own weights are left alone"


@pytest.mark.parametrize("kind", ["scale", "sign-flip"])
def test_update_faults_need_the_global_weights_and_a_weight_list(kind):
    with pytest.raises(ValueError, match="needs a weight-list upload and the received global weights"):
        faults.inject(config(kind), 1, 2, WEIGHTS, 10)
    with pytest.raises(ValueError, match="inject it in rounds >= 1"):
        faults.inject(config(kind, rounds="0"), 1, 0, NAMED, 10, GLOBAL)


def test_lie_examples_claims_the_largest_accepted_count_and_passes_validation():
    cfg = config("lie-examples")
    upload, examples = faults.inject(cfg, 1, 2, WEIGHTS, 10, GLOBAL)
    assert upload is WEIGHTS and examples == cfg.train.max_client_examples == 1_000_000
    payload.validate_num_examples(examples, cfg.train.max_client_examples, "c1")


def test_swap_rows_swaps_two_class_rows_of_the_embeddings_only():
    named = {"embeddings": np.arange(24, dtype=np.float32).reshape(3, 2, 4), "adapter.a": np.ones((4, 2), np.float32)}
    upload, _ = faults.inject(config("swap-rows", rounds="0"), 1, 0, named, 10)
    np.testing.assert_array_equal(upload["embeddings"], named["embeddings"][[1, 0, 2]])
    assert upload["adapter.a"] is named["adapter.a"]
    assert named["embeddings"][0, 0, 0] == 0, "the client's own arrays are left alone"


def test_huge_adapter_multiplies_adapter_values_and_stays_finite():
    named = {"embeddings": np.ones((2, 4), np.float32), "adapter.a": np.full((4, 2), 0.6, np.float16)}
    upload, _ = faults.inject(config("huge-adapter", rounds="0"), 1, 0, named, 10)
    assert upload["adapter.a"].dtype == np.float16 and np.isfinite(upload["adapter.a"]).all()
    np.testing.assert_allclose(upload["adapter.a"], 6000.0, rtol=1e-3)
    assert upload["embeddings"] is named["embeddings"]
    with pytest.raises(PayloadError, match="beyond synthesis.max-adapter-abs"):
        payload.validate_max_abs(upload, "adapter.", 100.0, "c1", "synthesis.max-adapter-abs")


@pytest.mark.parametrize("kind", ["swap-rows", "huge-adapter"])
def test_bundle_faults_refuse_a_weight_list(kind):
    with pytest.raises(ValueError, match="corrupts a round-0 bundle"):
        faults.inject(config(kind), 1, 2, WEIGHTS, 10, GLOBAL)
