"""Poisoned uploads against the robust aggregation of rounds >= 1 (train.aggregation, train.clip-norm,
train.example-weighting) and the round-0 magnitude bounds (synthesis.max-adapter-abs,
synthesis.max-embedding-norm-factor)."""

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from strategies import robust
from strategies.warmfed import WarmFedStrategy
from tests.test_strategy_base import GLOBAL, fit_res, strategy, weights
from tests.test_warmfed_strategy import config, uploads  # noqa: F401 - uploads is a fixture
from tests.test_warmfed_strategy import fit_res as round0_res
from tests.test_warmfed_strategy import strategy as round0_strategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import ConfigError, PayloadError
from warmfed_flwr.trust import faults
from warmfed_flwr.wire import payload, protocol
from warmfed_flwr.wire.updates import scale_update, update_norm

HONEST = {"a": 1.0, "b": 1.1, "c": 0.9}


def aggregated(tmp_path, results: list[tuple], **overrides) -> tuple[list[np.ndarray], object]:
    """The new global model from ``results`` (global model: zeros), and the run's recorder."""
    strat, recorder = strategy(tmp_path, **overrides)
    strat.global_weights = [array.copy() for array in GLOBAL]
    strat.sampled = [proxy.cid for proxy, _ in results]
    parameters, _ = strat.aggregate_fit(2, results, [])
    return parameters_to_ndarrays(parameters), recorder


def floats(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays if a.dtype.kind == "f"])


def honest_uploads() -> list[tuple]:
    return [fit_res(weights(value), name) for name, value in HONEST.items()]


def test_plain_mean_is_moved_without_bound_by_one_scaled_update(tmp_path):
    result, recorder = aggregated(tmp_path, [*honest_uploads(), fit_res(weights(1e8), "scaled")])
    assert floats(result).min() > 1e7, "the recorded weakness that train.clip-norm and the robust rules address"
    assert recorder.rounds[-1]["weight_share_max"] == pytest.approx(0.25)


def test_clip_norm_bounds_a_scaled_update_and_names_the_client(tmp_path):
    clip = 5.0  # an honest update here has norm value x sqrt(10) <= 3.5
    result, recorder = aggregated(tmp_path, [*honest_uploads(), fit_res(weights(1e8), "scaled")],
                                  **{"train.clip-norm": clip})
    honest_mean = [np.mean([w[i] for w in map(weights, HONEST.values())], axis=0) for i in range(2)]
    assert update_norm(result[:2], honest_mean) <= clip
    (event,) = [e for e in recorder.events if e["kind"] == "update_clipped"]
    assert (event["client"], event["round"], event["clip_norm"]) == ("scaled", 2, clip)
    assert event["norm"] == pytest.approx(1e8 * np.sqrt(10), rel=1e-6)
    assert recorder.rounds[-1]["clients_clipped"] == 1
    assert payload.weights_schema(result) == payload.weights_schema(GLOBAL)


@pytest.mark.parametrize(("kind", "factor"), [("scale", 1e3), ("sign-flip", 10.0)])
def test_injected_update_attacks_are_clipped_and_named(tmp_path, kind, factor):
    honest = weights(1.0)
    attacked = scale_update(honest, GLOBAL, faults.UPDATE_FAULTS[kind])
    clip = 3 * update_norm(honest, GLOBAL)
    result, recorder = aggregated(tmp_path, [*honest_uploads(), fit_res(attacked, kind)], **{"train.clip-norm": clip})
    (event,) = [e for e in recorder.events if e["kind"] == "update_clipped"]
    assert event["client"] == kind and event["norm"] == pytest.approx(factor * update_norm(honest, GLOBAL))
    assert update_norm(result, GLOBAL) <= clip


def test_clipping_keeps_the_direction_and_leaves_integer_tensors_alone():
    reference = [np.ones(4, np.float32), np.array(5, np.int64)]
    upload = [np.array([1, 1, 4, 5], np.float32), np.array(9, np.int64)]
    norm = update_norm(upload, reference)
    assert norm == pytest.approx(5.0), "the integer tensor's change counts for nothing"
    clipped = scale_update(upload, reference, 1.0 / norm)
    np.testing.assert_allclose(clipped[0], [1, 1, 1.6, 1.8], rtol=1e-6)
    assert clipped[1] == 9 and clipped[1].dtype == np.int64


@pytest.mark.parametrize(("rule", "expected"), [("median", 1.0), ("trimmed-mean", (0.7 + 1.0 + 1.2) / 3)])
def test_median_and_trimmed_mean_resist_a_scaled_and_a_sign_flipped_update(tmp_path, rule, expected):
    """Skewed honest values, so that the median (the middle one) and the trimmed mean (the mean of the three
    middle ones) differ from each other and from the plain mean."""
    honest = [fit_res(weights(value), name) for name, value in {"a": 0.7, "b": 1.0, "c": 1.2}.items()]
    poisoned = [*honest, fit_res(weights(1e8), "scaled"), fit_res(weights(-10.0), "flipped")]
    # 0.25 of a round of 4 (the config's sample) cuts 1 per side; of these 5 uploads too
    result, recorder = aggregated(tmp_path, poisoned, **{"train.aggregation": rule, "train.trim-fraction": 0.25})
    np.testing.assert_allclose(floats(result), expected, rtol=1e-6)
    assert payload.weights_schema(result) == payload.weights_schema(GLOBAL), "integer tensors keep their dtype"
    if rule == "trimmed-mean":
        assert recorder.rounds[-1]["clients_trimmed_per_side"] == 1


def test_uniform_weighting_ignores_a_lying_example_count(tmp_path):
    lying = [fit_res(weights(1.0), "a", 10), fit_res(weights(3.0), "liar", 1000)]
    by_examples, _ = aggregated(tmp_path / "examples", lying)
    uniform, recorder = aggregated(tmp_path / "uniform", lying, **{"train.example-weighting": "uniform"})
    assert floats(by_examples).min() > 2.9
    np.testing.assert_allclose(floats(uniform), 2.0)
    assert recorder.rounds[-1]["weight_share_max"] == 0.5


@pytest.mark.parametrize("honest_counts", [[10], [10, 12, 9, 11], [1, 1, 10, 10], [5, 5, 5, 5, 5, 5]])
def test_capped_weighting_bounds_the_liars_share(tmp_path, honest_counts):
    lying = [*(fit_res(weights(1.0), f"h{i}", count) for i, count in enumerate(honest_counts)),
             fit_res(weights(9.0), "liar", 1000)]
    result, recorder = aggregated(tmp_path, lying, **{"train.example-weighting": "capped"})
    clients, factor = len(lying), 2.0
    share = recorder.rounds[-1]["weight_share_max"]
    assert share <= factor / (factor + np.ceil((clients - 1) / 2)) + 1e-12, "the bound the key's description states"
    np.testing.assert_allclose(floats(result), 1.0 + 8.0 * share, rtol=1e-5)


def test_warmfed_rounds_aggregate_robustly_and_distill_from_clipped_uploads(tmp_path):
    seen: list[list[np.ndarray]] = []

    def finetune(aggregate, _round, client_weights):
        seen.extend(client_weights)
        return aggregate

    poisoned = [*honest_uploads(), fit_res(weights(1e8), "scaled"), fit_res(weights(-10.0), "flipped")]
    strat, recorder = strategy(tmp_path, WarmFedStrategy, **{"train.aggregation": "median", "train.clip-norm": 5.0})
    strat.warm_start = SimpleNamespace(finetune=finetune)
    strat.global_weights = [array.copy() for array in GLOBAL]
    result = parameters_to_ndarrays(strat.aggregate_fit(3, poisoned, [])[0])
    assert 0.9 <= floats(result).min() <= floats(result).max() <= 1.1
    assert {e["client"] for e in recorder.events if e["kind"] == "update_clipped"} == {"scaled", "flipped"}
    assert max(update_norm(w, GLOBAL) for w in seen) <= 5.0 * (1 + 1e-6)


@pytest.mark.parametrize(("override", "message"), [
    ({"train.trim-fraction": 0.5}, "config key 'train.trim-fraction' = 0.5 must lie in (0, 0.5)"),
    ({"train.trim-fraction": 0}, "config key 'train.trim-fraction' = 0 must lie in (0, 0.5)"),
    ({"train.clip-norm": -1.0}, "config key 'train.clip-norm' = -1.0 must not be negative"),
    ({"train.example-cap-factor": 1.0}, "config key 'train.example-cap-factor' = 1.0 must lie in (1, inf)"),
    ({"train.aggregation": "krum"}, "config key 'train.aggregation' = 'krum' is not allowed; use one of mean, "
                                    "median, trimmed-mean"),
    ({"train.example-weighting": "claimed"}, "'train.example-weighting' = 'claimed' is not allowed"),
    ({"synthesis.max-adapter-abs": -1.0}, "config key 'synthesis.max-adapter-abs' = -1.0 must not be negative"),
    ({"synthesis.max-embedding-norm-factor": -2.0}, "'synthesis.max-embedding-norm-factor' = -2.0 must not be "
                                                    "negative"),
    ({"train.aggregation": "trimmed-mean"}, "'train.trim-fraction' = 0.2 cuts no client from rounds of 4 "
                                            "(int(0.2 x 4) = 0 per side); raise it to at least 0.25"),
    ({"train.aggregation": "trimmed-mean", "train.trim-fraction": 0.4, "train.fraction-fit": 0.5},
     "rounds of 2 (int(0.4 x 2) = 0 per side); trimmed-mean needs at least 3 clients per round"),
])
def test_robustness_keys_are_refused_out_of_range_in_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        resolve({"algorithm": "fedavg", **override})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_trimmed_mean_that_cuts_a_client_per_side_is_accepted():
    cfg = resolve({"algorithm": "fedavg", "train.aggregation": "trimmed-mean", "train.trim-fraction": 0.25})
    assert robust.trimmed_per_side(cfg.data.num_clients, cfg.train.trim_fraction) == 1


# --- round 0 -----------------------------------------------------------------------------------------------------

def _with(named: dict, case: str) -> dict:
    named = dict(named)
    if case == "huge-adapter":
        key = next(k for k in named if k.startswith(protocol.ADAPTER_PREFIX))
        named[key] = named[key].copy()
        named[key].flat[0] = 1e6
    elif case == "scaled-embeddings":
        named[protocol.EMBEDDINGS] = named[protocol.EMBEDDINGS] * 1e3
    return named


def test_real_round_zero_uploads_lie_far_inside_the_bounds(uploads, tiny_pipeline_dir, tmp_path):  # noqa: F811
    strat, _ = round0_strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    strat.round_zero_schema()
    syn = strat.cfg.synthesis
    for name, named in uploads.items():
        assert strat.check_upload(1, name, round0_res(named, name)[1]).keys() == named.keys()
        adapter = payload.split_prefix(named, protocol.ADAPTER_PREFIX).values()
        assert max(float(np.abs(a).max()) for a in adapter) < syn.max_adapter_abs / 10
        largest_row = np.linalg.norm(named[protocol.EMBEDDINGS], axis=-1).max()
        assert largest_row < strat.embedding_norm_limit() / syn.max_embedding_norm_factor * 1.5


@pytest.mark.parametrize(("case", "reason"), [("huge-adapter", "beyond synthesis.max-adapter-abs = 100"),
                                              ("scaled-embeddings", "synthesis.max-embedding-norm-factor = 10 x")])
def test_round_zero_refuses_absurd_magnitudes_and_leaves_the_domain_out(uploads, tiny_pipeline_dir,  # noqa: F811
                                                                        tmp_path, case, reason):
    strat, recorder = round0_strategy(config(tiny_pipeline_dir, tmp_path), tmp_path, domains=["a", "b"])
    strat.sampled = ["a", "b"]
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [round0_res(uploads["a"], "a"),
                                            round0_res(_with(uploads["b"], case), "b")], [])
    assert parameters is not None and set(strat.warm_start.synthetic.sources) == {"a"}
    refused = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert [e["client"] for e in refused] == ["b"] and reason in refused[0]["reason"]
    left_out = {e["domain"]: e["reason"] for e in recorder.events if e["kind"] == "domain_left_out"}
    assert list(left_out) == ["b"] and reason in left_out["b"]


def test_round_zero_bounds_switched_off_accept_absurd_magnitudes(uploads, tiny_pipeline_dir, tmp_path):  # noqa: F811
    off = {"synthesis.max-adapter-abs": 0.0, "synthesis.max-embedding-norm-factor": 0.0,
           "synthesis.check-embedding-classes": False}
    strat, _ = round0_strategy(config(tiny_pipeline_dir, tmp_path, **off), tmp_path)
    strat.round_zero_schema()
    for case in ("huge-adapter", "scaled-embeddings"):
        strat.check_upload(1, "b", round0_res(_with(uploads["b"], case), "b")[1])
    assert strat.reference_embeddings is None, "no reference embeddings are computed when the checks are off"


def test_round_zero_magnitude_checks_name_the_entry():
    with pytest.raises(PayloadError, match=r"'adapter.x' holds a value of magnitude 1e\+06, beyond key = 10"):
        payload.validate_max_abs({"adapter.x": np.array([0.5, -1e6], np.float32)}, "adapter.", 10.0, "b", "key")
    rows = np.ones((3, 2, 4), np.float32)
    rows[2, 1] *= 100
    with pytest.raises(PayloadError, match=r"'embeddings' row \(2, 1\) has L2 norm 200, over 20 \(why\)"):
        payload.validate_row_norms(rows, "embeddings", 20.0, "b", "why")
    payload.validate_row_norms(rows[:2], "embeddings", 20.0, "b", "why")
