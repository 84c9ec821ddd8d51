"""Local differential privacy on uploads: clipping, Gaussian noise, seeding and the clients' upload points."""

import json

import dp_accounting
import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from clients import warmfed as warmfed_client_module
from clients.base import FederatedClient, LocalOnlyClient
from clients.warmfed import WarmFedClient
from tests.fake_digits import install_fake_digits
from warmfed_flwr.config.loading import key_is_used, resolve
from warmfed_flwr.data import load_client
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.learning.models import build_model
from warmfed_flwr.learning.training import get_weights, set_weights
from warmfed_flwr.server_app import server_fn
from warmfed_flwr.trust import dp
from warmfed_flwr.wire import payload, protocol

DP_KEYS = ("privacy.noise-multiplier", "privacy.clip-norm", "privacy.adapter-clip-norm", "privacy.embedding-clip-norm")


def norm(tensors: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(t.astype(np.float64) ** 2) for t in tensors)))


def float_update(weights: list[np.ndarray], start: list[np.ndarray]) -> list[np.ndarray]:
    return [w.astype(np.float64) - s for w, s in zip(weights, start, strict=True)
            if np.issubdtype(w.dtype, np.floating)]


def round0_upload(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {protocol.EMBEDDINGS: rng.normal(0, 1, (3, 4, 8)).astype(np.float32),
            protocol.ADAPTER_PREFIX + "a": rng.normal(0, 1, (5, 6)).astype(np.float32),
            protocol.ADAPTER_PREFIX + "b": rng.normal(0, 1, (7,)).astype(np.float32)}


# --- the functions ------------------------------------------------------------------------------------------------

def test_clipping_bounds_the_joint_norm_exactly_and_keeps_the_direction():
    tensors = [np.full((4, 4), 3.0, np.float32), np.full(9, -2.0, np.float32)]
    clipped, cut = dp.clip_and_noise(tensors, 5.0, 0.0, dp.round_rng(0, 1))
    assert cut and norm(clipped) == pytest.approx(5.0, rel=1e-6)
    scale = clipped[0][0, 0] / 3.0
    assert np.allclose(clipped[1], -2.0 * scale) and [c.dtype for c in clipped] == [np.float32, np.float32]


def test_noise_std_is_the_multiplier_times_the_clip_norm():
    zeros = [np.zeros((200, 500))]
    noised, cut = dp.clip_and_noise(zeros, 2.0, 1.5, dp.round_rng(7, 3))
    assert not cut
    assert noised[0].std() == pytest.approx(3.0, rel=0.01) and abs(noised[0].mean()) < 0.02


def test_zero_noise_and_a_large_clip_leave_every_upload_unchanged():
    rng = np.random.default_rng(0)
    named = round0_upload(rng)
    private, cut = dp.privatize_round0(named, 1e6, 1e6, 0.0, dp.round_rng(0, 0))
    assert not cut and all(np.array_equal(private[k], named[k]) for k in named)
    start = [rng.normal(0, 1, (3, 3)).astype(np.float32), np.array(5, np.int64)]
    weights = [start[0] + 0.25, np.array(6, np.int64)]
    update, cut = dp.privatize_update(weights, start, ["w", "n"], 1e6, 0.0, dp.round_rng(0, 1))
    assert not cut and np.allclose(update[0], weights[0], atol=1e-6) and update[1] == 6


def test_integer_arrays_are_untouched_and_only_the_float_update_is_clipped():
    start = [np.zeros((10, 10), np.float32), np.array(3, np.int64), np.ones(4, np.float32)]
    weights = [np.full((10, 10), 2.0, np.float32), np.array(40, np.int64), np.full(4, 3.0, np.float32)]
    names = ["conv.weight", "bn.num_batches_tracked", "conv.bias"]
    private, cut = dp.privatize_update(weights, start, names, 1.0, 0.0, dp.round_rng(0, 1))
    assert cut and private[1] == 40 and private[1].dtype == np.int64
    assert norm(float_update(private, start)) == pytest.approx(1.0, rel=1e-5)
    noised, _ = dp.privatize_update(weights, start, names, 1.0, 0.5, dp.round_rng(0, 1))
    assert noised[1] == 40 and not np.allclose(noised[0], private[0])


def test_batchnorm_running_statistics_go_back_to_the_global_ones_unnoised():
    start = [np.zeros(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)]
    weights = [np.full(4, 2.0, np.float32), np.full(4, 0.01, np.float32), np.full(4, 5.0, np.float32)]
    names = ["bn.weight", "bn.running_var", "bn.running_mean"]
    private, _ = dp.privatize_update(weights, start, names, 1.0, 3.0, dp.round_rng(0, 1))
    assert np.array_equal(private[1], start[1]) and np.array_equal(private[2], start[2])
    assert not np.allclose(private[0], weights[0])


def test_round0_clips_the_adapter_together_and_each_embedding_row_alone():
    named = round0_upload(np.random.default_rng(1))
    named[protocol.EMBEDDINGS][1] *= 100
    private, cut = dp.privatize_round0(named, 2.0, 3.0, 0.0, dp.round_rng(0, 0))
    adapter = [private[k] for k in named if k.startswith(protocol.ADAPTER_PREFIX)]
    assert cut and norm(adapter) == pytest.approx(2.0, rel=1e-6)
    rows = np.linalg.norm(private[protocol.EMBEDDINGS].reshape(3, -1), axis=1)
    assert rows == pytest.approx([3.0, 3.0, 3.0], rel=1e-6)
    small = {protocol.EMBEDDINGS: named[protocol.EMBEDDINGS][[0]]}
    row_norm = norm([small[protocol.EMBEDDINGS]])
    kept, cut = dp.privatize_round0(small, 2.0, row_norm * 2, 0.0, dp.round_rng(0, 0))
    assert not cut and np.array_equal(kept[protocol.EMBEDDINGS], small[protocol.EMBEDDINGS])


def test_the_same_client_and_round_give_the_same_noise_and_others_differ():
    named = round0_upload(np.random.default_rng(2))
    first = dp.privatize_round0(named, 1.0, 1.0, 0.3, dp.round_rng(5, 0))[0]
    again = dp.privatize_round0(named, 1.0, 1.0, 0.3, dp.round_rng(5, 0))[0]
    other = dp.privatize_round0(named, 1.0, 1.0, 0.3, dp.round_rng(6, 0))[0]
    assert all(np.array_equal(first[k], again[k]) for k in named)
    assert not np.allclose(first[protocol.EMBEDDINGS], other[protocol.EMBEDDINGS])
    assert not np.allclose(dp.round_rng(5, 1).normal(size=8), dp.round_rng(5, 2).normal(size=8))


# --- config -------------------------------------------------------------------------------------------------------

def test_dp_is_off_by_default_and_its_keys_count_for_uploading_algorithms_only():
    assert resolve({}).privacy.noise_multiplier == 0
    for algorithm in ("fedavg", "fedprox", "fgl", "warmfed"):
        cfg = resolve({"algorithm": algorithm})
        assert key_is_used(cfg, "privacy.noise-multiplier") and key_is_used(cfg, "privacy.clip-norm")
    for algorithm in ("fgl", "warmfed"):
        assert all(key_is_used(resolve({"algorithm": algorithm}), key) for key in DP_KEYS)
    fedavg = resolve({"algorithm": "fedavg"})
    assert not any(key_is_used(fedavg, key) for key in ("privacy.adapter-clip-norm", "privacy.embedding-clip-norm"))
    for algorithm in ("local", "centralized"):
        assert not any(key_is_used(resolve({"algorithm": algorithm}), key) for key in DP_KEYS)


# --- the upload points --------------------------------------------------------------------------------------------

def fake_client(cls: type[FederatedClient], monkeypatch: pytest.MonkeyPatch, tmp_path, node_config=None,
                **overrides):
    install_fake_digits(monkeypatch, [60, 60, 60, 60], shuffle_labels=True)
    cfg = resolve({"device": "cpu", "data.max-per-domain": 60, "train.local-epochs": 1, **overrides})
    class_names, split = load_client(cfg.data, cfg.seed, tmp_path / "cache", 0)
    context = Context(run_id=0, node_id=0, node_config=node_config or {}, state=RecordDict(), run_config={})
    return cls(cfg, class_names, split, 0, context, torch.device("cpu"), tmp_path / "cache")


ROUND1 = {protocol.ROUND: 1, protocol.TOTAL_ROUNDS: 3}


def test_a_client_fit_with_dp_uploads_an_update_within_the_clip_plus_its_noise(monkeypatch, tmp_path):
    dp_config = {"algorithm": "fedavg", "privacy.noise-multiplier": 0.01, "privacy.clip-norm": 0.05, "train.lr": 0.1}
    client = fake_client(FederatedClient, monkeypatch, tmp_path, {"dp-secret": 7}, **dp_config)
    start = get_weights(build_model(client.cfg.model, len(client.class_names)))
    weights, _, metrics = client.fit(start, ROUND1)
    update = float_update(weights, start)
    values = sum(w.size for w, name in zip(start, client.model.state_dict(), strict=True)
                 if np.issubdtype(w.dtype, np.floating) and not name.endswith(dp.RUNNING_STATISTICS))
    noise = 0.01 * 0.05 * np.sqrt(values)
    assert metrics[dp.CLIPPED_METRIC] == 1
    assert norm(update) == pytest.approx(np.hypot(0.05, noise), rel=0.05)
    ints = [i for i, w in enumerate(start) if not np.issubdtype(w.dtype, np.floating)]
    assert ints and all(weights[i] == get_weights(client.model)[i] for i in ints)
    again = fake_client(FederatedClient, monkeypatch, tmp_path / "again", {"dp-secret": 7}, **dp_config)
    assert all(np.array_equal(a, b) for a, b in zip(weights, again.fit(start, ROUND1)[0], strict=True))


def test_without_a_given_secret_the_noise_is_the_clients_own_and_bn_statistics_stay_global(monkeypatch, tmp_path):
    dp_config = {"algorithm": "fedavg", "privacy.noise-multiplier": 0.05, "privacy.clip-norm": 5.0, "train.lr": 0.1}
    uploads = []
    for name in ("one", "two"):
        client = fake_client(FederatedClient, monkeypatch, tmp_path / name, **dp_config)
        start = get_weights(build_model(client.cfg.model, len(client.class_names)))
        uploads.append(client.fit(start, ROUND1)[0])
    assert not np.array_equal(uploads[0][0], uploads[1][0]), "same run config, same noise: the server could remove it"
    names = list(client.model.state_dict())
    stats = [i for i, n in enumerate(names) if n.endswith(dp.RUNNING_STATISTICS)]
    assert stats and all(np.array_equal(uploads[0][i], start[i]) for i in stats)
    averaged = [np.mean([u[i] for u in uploads], axis=0).astype(start[i].dtype) for i in range(len(start))]
    model = build_model(client.cfg.model, len(client.class_names))
    set_weights(model, averaged)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.stack([client.split.test[i][0] for i in range(4)]))).all()


def test_without_dp_a_client_uploads_its_trained_weights_and_no_dp_metric(monkeypatch, tmp_path):
    client = fake_client(FederatedClient, monkeypatch, tmp_path, algorithm="fedavg")
    start = get_weights(build_model(client.cfg.model, len(client.class_names)))
    weights, _, metrics = client.fit(start, ROUND1)
    assert dp.CLIPPED_METRIC not in metrics
    assert all(np.array_equal(a, b) for a, b in zip(weights, get_weights(client.model), strict=True))


def test_local_only_clients_get_no_dp(monkeypatch, tmp_path):
    client = fake_client(LocalOnlyClient, monkeypatch, tmp_path, **{"algorithm": "local",
                                                                    "privacy.noise-multiplier": 1.0})
    start = get_weights(build_model(client.cfg.model, len(client.class_names)))
    weights, _, metrics = client.fit(start, ROUND1)
    assert dp.CLIPPED_METRIC not in metrics
    assert all(np.array_equal(a, b) for a, b in zip(weights, get_weights(client.model), strict=True))


def test_warmfed_round0_and_globalization_uploads_are_clipped_and_noised(monkeypatch, tmp_path):
    """Each upload is its clipped part plus noise of std noise-multiplier x its clip norm from the client's secret."""
    sigma = 0.1
    named = round0_upload(np.random.default_rng(3))
    monkeypatch.setattr(warmfed_client_module, "client_upload", lambda *args, **kwargs: (named, {}))
    monkeypatch.setattr(warmfed_client_module, "globalize_client", lambda model, *args: 0.0)
    client = fake_client(WarmFedClient, monkeypatch, tmp_path, {"dp-secret": 7}, **{
        "privacy.noise-multiplier": sigma, "privacy.adapter-clip-norm": 1.0, "privacy.embedding-clip-norm": 2.0,
        "privacy.clip-norm": 0.1})
    sent, _, metrics = client.fit([], {protocol.STAGE: protocol.STAGE_ROUND0_UPLOAD, protocol.ROUND: 0})
    upload = payload.decode(sent, "client")
    clipped = dp.privatize_round0(named, 1.0, 2.0, 0.0, dp.round_rng(7, 0))[0]
    assert metrics[dp.CLIPPED_METRIC] == 1
    adapter = [k for k in named if k.startswith(protocol.ADAPTER_PREFIX)]
    assert norm([clipped[k] for k in adapter]) == pytest.approx(1.0, rel=1e-6)
    adapter_noise = np.concatenate([(upload[k] - clipped[k]).ravel() for k in adapter])
    assert adapter_noise.std() == pytest.approx(sigma * 1.0, rel=0.3), "37 draws of std noise x adapter clip"
    embedding_noise = upload[protocol.EMBEDDINGS] - clipped[protocol.EMBEDDINGS]
    assert embedding_noise.std() == pytest.approx(sigma * 2.0, rel=0.3), "96 draws of std noise x row clip"
    start = get_weights(build_model(client.cfg.model, len(client.class_names)))
    moved = [w + 1.0 if np.issubdtype(w.dtype, np.floating) else w for w in start]
    monkeypatch.setattr(client, "get_parameters", lambda config: moved)
    bundle = payload.encode(payload.with_prefix(payload.weights_to_named(start), protocol.MODEL_PREFIX))
    weights, _, metrics = client.fit(bundle, {protocol.STAGE: protocol.STAGE_GLOBALIZE, **ROUND1})
    names = list(client.model.state_dict())
    clipped = dp.privatize_update(moved, start, names, 0.1, 0.0, dp.round_rng(7, 1))[0]
    assert metrics[dp.CLIPPED_METRIC] == 1 and norm(float_update(clipped, start)) == pytest.approx(0.1, rel=1e-5)
    noise = np.concatenate([(w.astype(np.float64) - c).ravel() for w, c, name in zip(weights, clipped, names,
                                                                                     strict=True)
                            if np.issubdtype(w.dtype, np.floating) and not name.endswith(dp.RUNNING_STATISTICS)])
    assert noise.std() == pytest.approx(sigma * 0.1, rel=0.02), f"{noise.size} draws of std noise x clip norm"


# --- the privacy budget -------------------------------------------------------------------------------------------

DELTA = 1e-5


def test_a_client_releases_its_round0_parts_and_one_update_per_round():
    assert dp.client_releases(resolve({"train.rounds": 5}), 10) == 1 + 10 + 5, "adapter, 10 rows, 5 updates"
    assert dp.client_releases(resolve({"algorithm": "fgl", "train.rounds": 5}), 10) == 10 + 5, "FGL has no adapter"
    assert dp.client_releases(resolve({"algorithm": "fedavg", "train.rounds": 5}), 10) == 5
    assert dp.client_releases(resolve({"algorithm": "local", "train.rounds": 5}), 10) == 0


def test_epsilon_is_the_rdp_account_of_replace_one_gaussians_composed_over_the_releases():
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.0), 16)  # noise multiplier 2 on sensitivity 2 x clip
    assert dp.epsilon(2.0, 16, DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)
    assert dp.epsilon(2.0, 1, DELTA) == pytest.approx(dp.epsilon(8.0, 16, DELTA), rel=1e-9), "16 = 1 at 4 x noise"
    assert dp.epsilon(1.0, 16, DELTA) > dp.epsilon(2.0, 16, DELTA) > dp.epsilon(2.0, 8, DELTA)
    assert dp.epsilon(2.0, 16, 1e-7) > dp.epsilon(2.0, 16, DELTA)


def test_target_epsilon_sets_the_smallest_noise_within_the_budget():
    cfg = resolve({"privacy.target-epsilon": 8.0, "train.rounds": 5})
    sigma = dp.with_privacy_budget(cfg, 10).privacy.noise_multiplier
    assert dp.epsilon(sigma, 16, DELTA) == pytest.approx(8.0, rel=1e-3)
    assert dp.epsilon(sigma, 16, DELTA) <= 8.0 < dp.epsilon(0.99 * sigma, 16, DELTA)
    budget = dp.privacy_budget(cfg, 10)
    assert budget["noise_multiplier"] == sigma and budget["epsilon"] == pytest.approx(8.0, rel=1e-3)
    assert (budget["delta"], budget["releases_per_client"], budget["target_epsilon"]) == (DELTA, 16, 8.0)
    stricter = dp.with_privacy_budget(resolve({"privacy.target-epsilon": 8.0, "privacy.delta": 1e-7}), 10)
    assert stricter.privacy.noise_multiplier > sigma
    assert dp.with_privacy_budget(resolve({"algorithm": "local", "privacy.target-epsilon": 8.0}), 10) == resolve(
        {"algorithm": "local", "privacy.target-epsilon": 8.0})


def test_a_run_without_dp_reports_no_budget_and_a_target_excludes_a_noise_multiplier():
    assert dp.privacy_budget(resolve({}), 10) == {}
    assert dp.privacy_budget(resolve({"algorithm": "local", "privacy.noise-multiplier": 1.0}), 10) == {}
    with pytest.raises(ConfigError, match="'privacy.target-epsilon' = 8 sets the noise multiplier itself"):
        resolve({"privacy.target-epsilon": 8.0, "privacy.noise-multiplier": 0.5})
    with pytest.raises(ConfigError, match="'privacy.delta' = 1.0"):
        resolve({"privacy.delta": 1.0})


def test_the_server_records_the_budget_in_metrics_json_and_summary_md(monkeypatch, tmp_path):
    install_fake_digits(monkeypatch, [60, 60, 60, 60], shuffle_labels=True)
    run_config = {"algorithm": "fedavg", "device": "cpu", "data.max-per-domain": 60, "train.rounds": 3,
                  "privacy.noise-multiplier": 4.0, "cache-dir": str(tmp_path / "cache"),
                  "output-dir": str(tmp_path), "run-name": "run"}
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    recorder = server_fn(context).strategy.inner.recorder
    recorder.finish()
    budget = json.loads((tmp_path / "run" / "metrics.json").read_text())["privacy_budget"]
    assert budget["epsilon"] == pytest.approx(dp.epsilon(4.0, 3, DELTA)) and budget["releases_per_client"] == 3
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert f"(epsilon = {budget['epsilon']:.3g}, delta = 1e-05)" in summary and "docs/privacy.md" in summary


def test_a_client_noises_with_the_noise_multiplier_its_target_epsilon_sets(monkeypatch, tmp_path):
    overrides = {"algorithm": "fedavg", "privacy.target-epsilon": 2.0, "privacy.clip-norm": 0.05, "train.rounds": 3}
    client = fake_client(FederatedClient, monkeypatch, tmp_path, {"dp-secret": 7}, **overrides)
    client.cfg = dp.with_privacy_budget(client.cfg, len(client.class_names))
    sigma = client.cfg.privacy.noise_multiplier
    start = get_weights(build_model(client.cfg.model, len(client.class_names)))
    update = float_update(client.fit(start, ROUND1)[0], start)
    values = sum(u.size for u in update) - sum(w.size for w, name in zip(start, client.model.state_dict(), strict=True)
                                               if name.endswith(dp.RUNNING_STATISTICS))
    assert sigma > 1 and norm(update) == pytest.approx(np.hypot(0.05, sigma * 0.05 * np.sqrt(values)), rel=0.05)
