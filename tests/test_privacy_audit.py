"""Client-side privacy audit: the statistics, the one-time audit sample the strategy sends, the client's report and
the run record's "Privacy audit" section."""

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from torch.utils.data import TensorDataset

from clients.warmfed import WarmFedClient
from strategies.warmfed import WarmFedStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import ClientSplit, ImageArrayDataset
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.learning.models import SmallCNN
from warmfed_flwr.learning.training import get_weights
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.records.results import RunRecorder, summarize
from warmfed_flwr.trust.privacy_audit import penultimate_features, privacy_audit
from warmfed_flwr.wire import payload, protocol

CLASSES = ["zero", "one", "two"]
AUDIT_KEYS = {"audit_pixel_closer_share", "audit_pixel_near_copy_share", "audit_feature_closer_share",
              "audit_feature_near_copy_share"}


def draw(count: int, rng: np.random.Generator, side: int = 8) -> np.ndarray:
    """uint8 [N, side, side, 3] images: one of five fixed prototypes plus Gaussian noise."""
    prototypes = np.random.default_rng(0).integers(0, 256, (5, side, side, 3))
    noisy = prototypes[rng.integers(0, 5, count)] + rng.normal(0, 40, (count, side, side, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def random_features(images: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of the pixels (a stand-in feature space)."""
    projection = torch.randn(images[0].numel(), 16, generator=torch.Generator().manual_seed(1))
    return images.flatten(1) @ projection


# --- the statistics ----------------------------------------------------------------------------------------------

def test_copies_of_train_images_are_closer_to_train_and_near_copies():
    rng = np.random.default_rng(1)
    train, test = draw(150, rng), draw(150, rng)
    copies = train[rng.choice(150, 100, replace=False)]
    audits = privacy_audit(copies, ImageArrayDataset(train, np.zeros(150)), test, seed=0, features=random_features)
    for space in ("pixel", "feature"):
        assert audits[space].closer_to_train_share == pytest.approx(1.0)
        assert audits[space].near_copy_share == pytest.approx(1.0)
        assert audits[space].median_train_distance < 1e-2 < audits[space].median_test_distance


def test_independent_draws_are_as_close_to_train_as_to_test():
    rng = np.random.default_rng(2)
    train, test, fresh = draw(200, rng), draw(200, rng), draw(600, rng)
    audits = privacy_audit(fresh, train, test, seed=0, features=random_features, chunk=64)
    for space in ("pixel", "feature"):
        assert audits[space].closer_to_train_share == pytest.approx(0.5, abs=0.07)
        assert audits[space].near_copy_share == pytest.approx(0.05, abs=0.035)


def test_copies_are_flagged_even_when_train_is_larger_than_the_balanced_reference():
    rng = np.random.default_rng(3)
    train, test = draw(400, rng), draw(100, rng)
    audit = privacy_audit(train[:100], train, test, seed=0)["pixel"]
    assert audit.near_copy_share == pytest.approx(1.0)
    assert 0.55 < audit.closer_to_train_share < 1.0


def test_float_and_uint8_layouts_and_chunk_sizes_give_the_same_audit():
    rng = np.random.default_rng(4)
    train, test, synthetic = draw(90, rng), draw(70, rng), draw(50, rng)
    as_float = torch.from_numpy(synthetic).permute(0, 3, 1, 2).float() / 255
    test_set = TensorDataset(torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255, torch.zeros(70))
    reference = privacy_audit(synthetic, train, test, seed=5)["pixel"]
    other = privacy_audit(as_float, torch.from_numpy(train), test_set, seed=5, chunk=16)["pixel"]
    assert other.closer_to_train_share == reference.closer_to_train_share
    assert other.near_copy_share == reference.near_copy_share
    assert other.median_train_distance == pytest.approx(reference.median_train_distance, rel=1e-4)


def test_read_only_images_give_the_same_audit_without_a_warning():
    rng = np.random.default_rng(6)
    train, test, synthetic = draw(60, rng), draw(60, rng), draw(40, rng)
    reference = privacy_audit(synthetic, train, test, seed=1)["pixel"]
    for array in (train, test, synthetic):
        array.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_only = privacy_audit(synthetic, train, test, seed=1)["pixel"]
    assert read_only.closer_to_train_share == reference.closer_to_train_share
    assert read_only.median_train_distance == reference.median_train_distance


def test_images_of_another_size_are_refused():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="differ in shape"):
        privacy_audit(draw(10, rng, side=16), draw(10, rng), draw(10, rng), seed=0)


def test_penultimate_features_are_the_heads_input_and_keep_the_training_mode():
    model = SmallCNN(3).train()
    features = penultimate_features(model, torch.device("cpu"))(torch.rand(4, 3, 32, 32))
    assert features.shape == (4, 128) and model.training


# --- the strategy sends each client its own images once ------------------------------------------------------------

def config(tiny_pipeline_dir, tmp_path, **overrides):
    return resolve({"generator.base": str(tiny_pipeline_dir), "warmfed.warm-epochs": 1, "device": "cpu",
                    "cache-dir": str(tmp_path / "cache"), "train.min-fit-clients": 1, "data.num-clients": 2,
                    "data.domains": "a,b", "privacy.audit-images": 5, "synthesis.subset-ratio": 0.5, **overrides})


FILL = {"a": 10, "b": 200}
"""Every pixel of the synthetic images made from a client's upload (so a sample shows whose they are)."""


def warmed_strategy(cfg, tmp_path):
    """A strategy after round 0 with accepted uploads from nodes n1 (client a) and n2 (client b)."""
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", recorder.directory)
    warm_start.build_synthetic = lambda uploads: warm_start._keep(
        [(client, np.full((9, 32, 32, 3), FILL[client], np.uint8), torch.arange(9) % 3) for client, _ in uploads])
    strat = WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=3, warm_start=warm_start)
    upload = {name: np.zeros(shape, np.float32) for name, (shape, _dtype) in strat.round_zero_schema().items()}
    prompts = class_prompts(cfg.generator.prompt_template, CLASSES)
    upload[protocol.EMBEDDINGS] = prompt_embeddings(warm_start.generator(), prompts).float().numpy()
    results = [(SimpleNamespace(cid=cid), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(payload.encode(upload)),
                                                 24, {protocol.CLIENT_NAME: name}))
               for cid, name in (("n1", "a"), ("n2", "b"))]
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, results, [])
    return strat, parameters


def globalize(strat, server_round, parameters, cids):
    nodes = [SimpleNamespace(cid=cid) for cid in cids]
    manager = SimpleNamespace(num_available=lambda: len(nodes), wait_for=lambda *args, **kwargs: True,
                              all=lambda: {node.cid: node for node in nodes}, sample=lambda *args, **kwargs: nodes)
    return {client.cid: payload.decode(parameters_to_ndarrays(ins.parameters))
            for client, ins in strat.configure_fit(server_round, parameters, manager)}


@pytest.mark.parametrize("algorithm", ["warmfed", "fgl"])
def test_each_node_gets_a_sample_of_its_own_images_in_its_first_globalization_round_only(
        tiny_pipeline_dir, tmp_path, algorithm):
    strat, parameters = warmed_strategy(config(tiny_pipeline_dir, tmp_path, algorithm=algorithm), tmp_path)
    first = globalize(strat, 2, parameters, ["n1", "n3"])
    audit = first["n1"][protocol.AUDIT_IMAGES]
    assert audit.shape == (5, 3, 32, 32) and audit.dtype == np.uint8 and (audit == FILL["a"]).all()
    assert protocol.AUDIT_IMAGES not in first["n3"]  # no round-0 upload from n3: nothing made from it
    later = globalize(strat, 3, parameters, ["n1", "n2"])
    assert protocol.AUDIT_IMAGES not in later["n1"]
    assert (later["n2"][protocol.AUDIT_IMAGES] == FILL["b"]).all()
    assert all(protocol.AUDIT_IMAGES not in named for named in globalize(strat, 3, parameters, ["n1", "n2"]).values())


def test_audit_images_zero_sends_none(tiny_pipeline_dir, tmp_path):
    strat, parameters = warmed_strategy(config(tiny_pipeline_dir, tmp_path, **{"privacy.audit-images": 0}), tmp_path)
    assert all(protocol.AUDIT_IMAGES not in named for named in globalize(strat, 2, parameters, ["n1", "n2"]).values())


def test_reported_audits_land_in_metrics_json_and_the_summary(tiny_pipeline_dir, tmp_path):
    strat, parameters = warmed_strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    weights = parameters_to_ndarrays(parameters)
    reports = {"a": {"audit_pixel_closer_share": 0.5, "audit_feature_near_copy_share": 0.05, "train_loss": 1.0},
               "b": {"train_loss": 1.0}}
    results = [(SimpleNamespace(cid=cid), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 24,
                                                 {protocol.CLIENT_NAME: name, **reports[name]}))
               for cid, name in (("n1", "a"), ("n2", "b"))]
    globalize(strat, 2, parameters, ["n1", "n2"])
    strat.aggregate_fit(2, results, [])
    metrics = json.loads((strat.recorder.directory / "metrics.json").read_text())
    assert metrics["privacy_audit"] == {"a": {"audit_pixel_closer_share": 0.5, "audit_feature_near_copy_share": 0.05}}
    assert "## Privacy audit" in strat.recorder.finish()


# --- the client audits and reports scalars only ------------------------------------------------------------------

def test_client_reports_the_audit_when_the_server_sends_images(tmp_path):
    rng = np.random.default_rng(6)
    train, test = draw(40, rng, side=32), draw(30, rng, side=32)
    split = ClientSplit("a", "a", ImageArrayDataset(train, np.arange(40) % 3),
                        ImageArrayDataset(test, np.arange(30) % 3))
    cfg = resolve({"device": "cpu", "train.batch-size": 16})
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    client = WarmFedClient(cfg, CLASSES, split, 0, context, torch.device("cpu"), tmp_path)
    model = payload.with_prefix(payload.weights_to_named(get_weights(SmallCNN(3))), protocol.MODEL_PREFIX)
    config = {protocol.STAGE: protocol.STAGE_GLOBALIZE, protocol.ROUND: 1, protocol.TOTAL_ROUNDS: 3}
    copies = np.ascontiguousarray(train[:20].transpose(0, 3, 1, 2))
    _, _, metrics = client.fit(payload.encode({**model, protocol.AUDIT_IMAGES: copies}), config)
    assert AUDIT_KEYS <= set(metrics)
    assert metrics["audit_pixel_near_copy_share"] == 1.0 and metrics["audit_feature_near_copy_share"] == 1.0
    assert all(isinstance(metrics[key], float) for key in AUDIT_KEYS)
    _, _, later = client.fit(payload.encode(model), {**config, protocol.ROUND: 2})
    assert not any(key.startswith("audit_") for key in later)
    small = np.zeros((5, 3, 16, 16), np.uint8)
    weights, _, skipped = client.fit(payload.encode({**model, protocol.AUDIT_IMAGES: small}),
                                     {**config, protocol.ROUND: 3})
    assert weights and "train_loss" in skipped and not any(key.startswith("audit_") for key in skipped)


# --- the summary -------------------------------------------------------------------------------------------------

def test_summary_has_a_privacy_audit_table_per_client():
    audits = {"client-10": {"audit_pixel_closer_share": 1.0},
              "client-2": {"audit_pixel_closer_share": 0.5, "audit_pixel_near_copy_share": 0.05,
                           "audit_feature_closer_share": 0.25, "audit_feature_near_copy_share": 0.0}}
    lines = summarize([], {}, {}, (), audits).splitlines()
    at = lines.index("## Privacy audit")
    assert any("50 (0.5) = no sign of memorisation" in line for line in lines[at:at + 3])
    table = [line for line in lines[at:] if line.startswith("|")][:4]
    assert table == ["| client | pixel closer-share | pixel near-copy | feature closer-share | feature near-copy |",
                     "|---|---|---|---|---|",
                     "| client-2 | 50.00 | 5.00 | 25.00 | 0.00 |",
                     "| client-10 | 100.00 | nan | nan | nan |"]
    assert "## Privacy audit" not in summarize([], {}, {})


def test_a_resumed_recorder_keeps_the_audits(tmp_path):
    recorder = RunRecorder(tmp_path / "run", {})
    recorder.record_privacy_audit("a", {"audit_pixel_closer_share": 0.5})
    resumed = RunRecorder(tmp_path / "run", {})
    resumed.restore(json.loads(json.dumps(recorder.history())))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["privacy_audit"] == {
        "a": {"audit_pixel_closer_share": 0.5}}
