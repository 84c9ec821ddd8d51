"""WarmFed round 0 and globalization through the Strategy and client steps, without a Flower run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from torch.utils.data import TensorDataset

from strategies.warmfed import WarmFedStrategy
from warmfed_flwr import payload, protocol
from warmfed_flwr.config import resolve
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.results import RunRecorder
from warmfed_flwr.training import get_weights
from warmfed_flwr.warmstart import WarmStartServer, balanced_subset, client_upload

CLASSES = ["zero", "one", "two"]


def split(name: str, seed: int) -> ClientSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(24, 3, 32, 32, generator=generator)
    labels = torch.arange(24) % 3
    return ClientSplit(name, name, TensorDataset(images, labels), TensorDataset(images[:6], labels[:6]))


def config(tiny_pipeline_dir, tmp_path, **overrides):
    flat = {"generator.base": str(tiny_pipeline_dir), "lora.steps": 2, "lora.batch-size": 8,
            "synthesis.images-per-class": 4, "synthesis.steps": 2, "synthesis.batch-size": 12,
            "synthesis.subset-ratio": 0.5, "warmfed.warm-epochs": 1, "cache-dir": str(tmp_path / "cache"),
            "device": "cpu", "train.min-fit-clients": 1, **overrides}
    return resolve(flat)


def fit_res(named: dict, client: str, num_examples: int = 24) -> tuple:
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(payload.encode(named)), num_examples,
                 {protocol.CLIENT_NAME: client})
    return SimpleNamespace(cid=client), res


@pytest.fixture(scope="module")
def uploads(tiny_pipeline_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uploads")
    cfg = config(tiny_pipeline_dir, tmp)
    return {name: client_upload(cfg, split(name, i), CLASSES, torch.device("cpu"), tmp)[0]
            for i, name in enumerate(["a", "b"])}


def strategy(cfg, tmp_path, domains=()):
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    server = WarmStartServer(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", recorder.directory)
    return WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=3, server=server, domains=domains), recorder


def test_warm_start_model_starts_from_the_seed_whatever_drew_before(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path)
    torch.manual_seed(0)
    first = WarmStartServer(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    torch.manual_seed(0)
    torch.rand(1000)  # as building the foundation in the same process does
    second = WarmStartServer(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    for a, b in zip(get_weights(first.model), get_weights(second.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_upload_holds_adapter_and_embeddings_only(uploads):
    named = uploads["a"]
    assert protocol.EMBEDDINGS in named and named[protocol.EMBEDDINGS].shape[0] == len(CLASSES)
    adapter = payload.split_prefix(named, protocol.ADAPTER_PREFIX)
    assert adapter and all("lora" in key for key in adapter)
    assert set(named) == {protocol.EMBEDDINGS, *(protocol.ADAPTER_PREFIX + k for k in adapter)}


def _corrupt(named, case):
    named = dict(named)
    key = next(k for k in named if k.startswith(protocol.ADAPTER_PREFIX))
    if case == "missing-key":
        named.pop(key)
    elif case == "extra-key":
        named["adapter.evil"] = np.zeros(3, np.float32)
    elif case == "wrong-shape":
        named[key] = np.zeros((1, 1), np.float32)
    elif case == "nan":
        named[key] = np.full_like(named[key], np.nan)
    elif case == "embeddings-shape":
        named[protocol.EMBEDDINGS] = named[protocol.EMBEDDINGS][:2]
    elif case == "wrong-dtype":
        named[key] = named[key].astype(np.float16)
    return named


CASES = {"missing-key": "lacks", "extra-key": "unexpected", "wrong-shape": "shape", "nan": "NaN",
         "embeddings-shape": "shape", "wrong-dtype": "dtype", "no-manifest": "no manifest",
         "oversize": "over the limit"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_upload_is_refused_and_the_round_goes_on(uploads, tiny_pipeline_dir, tmp_path, case):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    good = fit_res(uploads["a"], "a")
    bad = fit_res(_corrupt(uploads["b"], case), "b")
    if case == "no-manifest":
        bad[1].parameters = ndarrays_to_parameters([np.zeros(4, np.float32)])
    if case == "oversize":
        bad = fit_res({**uploads["b"], "adapter.pad": np.zeros(strat.max_upload_bytes // 4, np.float32)}, "b")
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [good, bad], [])
    assert parameters is not None
    refused = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert [e["client"] for e in refused] == ["b"]
    assert CASES[case] in refused[0]["reason"]
    row = next(r for r in recorder.rounds if r["round"] == 0)
    assert row["clients_accepted"] == 1
    assert row["synthetic_images"] == 4 * len(CLASSES)


def test_round_zero_builds_synthetic_set_grids_and_one_shot_model(uploads, tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path)
    strat, recorder = strategy(cfg, tmp_path)
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(uploads["b"], "b")], [])
    weights = parameters_to_ndarrays(parameters)
    assert len(weights) == len(strat.server.model.state_dict())
    assert strat.server.synthetic.sources.count("a") == strat.server.synthetic.sources.count("b") == 12
    assert (recorder.directory / "synthetic_a.png").exists() and (recorder.directory / "synthetic_b.png").exists()
    counts = torch.bincount(strat.server.subset.tensors[1])
    assert counts.tolist() == [4, 4, 4]
    assert {"synthesis", "warm_start_training", "client_lora"} <= set(recorder.stage_seconds)


def test_lora_switch_off_sends_prompts_only(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"lora.enabled": False})
    named, timings = client_upload(cfg, split("a", 0), CLASSES, torch.device("cpu"), tmp_path)
    assert set(named) == {protocol.EMBEDDINGS} and "lora_seconds" not in timings
    strat, _ = strategy(cfg, tmp_path)
    assert set(strat.server.upload_schema()) == {protocol.EMBEDDINGS}


def test_adapters_change_the_synthetic_images(uploads, tiny_pipeline_dir, tmp_path):
    server = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)[0].server
    with_adapter = server.synthesize_client("a", uploads["a"], seed=0)[0]
    prompts_only = server.synthesize_client("a0", {protocol.EMBEDDINGS: uploads["a"][protocol.EMBEDDINGS]}, seed=0)[0]
    assert not torch.equal(with_adapter, prompts_only)


def test_clients_with_identical_prompts_get_distinct_images(uploads, tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"lora.enabled": False})
    strat, _ = strategy(cfg, tmp_path)
    prompts = {protocol.EMBEDDINGS: uploads["a"][protocol.EMBEDDINGS]}
    synthetic = strat.server.build_synthetic([("a", prompts), ("b", prompts)])
    half = len(synthetic.labels) // 2
    assert not torch.equal(synthetic.images[:half], synthetic.images[half:])


def _globalize_bundle(strat, client_manager_clients, parameters):
    manager = SimpleNamespace(num_available=lambda: len(client_manager_clients),
                              sample=lambda num_clients, min_num_clients: client_manager_clients,
                              wait_for=lambda n: True)
    return strat.configure_fit(2, parameters, manager)


@pytest.mark.parametrize("client_syn", [True, False])
def test_client_synthetic_switch_controls_the_subset_download(uploads, tiny_pipeline_dir, tmp_path, client_syn):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.client-syn-finetune": client_syn})
    strat, _ = strategy(cfg, tmp_path)
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [fit_res(uploads["a"], "a")], [])
    clients = [SimpleNamespace(cid="a"), SimpleNamespace(cid="b")]
    first = _globalize_bundle(strat, clients, parameters)
    second = _globalize_bundle(strat, clients, parameters)
    for _client, ins in first:
        named = payload.decode(parameters_to_ndarrays(ins.parameters))
        assert (protocol.SYNTHETIC_IMAGES in named) == client_syn
        assert ins.config[protocol.STAGE] == protocol.STAGE_GLOBALIZE
    for _client, ins in second:
        assert protocol.SYNTHETIC_IMAGES not in payload.decode(parameters_to_ndarrays(ins.parameters))


@pytest.mark.parametrize("server_ft", [True, False])
def test_server_finetune_switch(uploads, tiny_pipeline_dir, tmp_path, server_ft):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.server-finetune": server_ft})
    strat, _ = strategy(cfg, tmp_path)
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [fit_res(uploads["a"], "a")], [])
    weights = parameters_to_ndarrays(parameters)
    tuned = strat.server.finetune([w.copy() for w in weights], 1)
    changed = any(not np.array_equal(a, b) for a, b in zip(weights, tuned, strict=True))
    assert changed == server_ft


def test_balanced_subset_keeps_the_ratio_per_class():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    index = balanced_subset(labels, 0.5, seed=0)
    assert torch.bincount(labels[index]).tolist() == [5, 10, 15]
    assert torch.equal(index, balanced_subset(labels, 0.5, seed=0))


@pytest.mark.parametrize("count", [10**12, -5])
def test_round_zero_refuses_absurd_example_counts(uploads, tiny_pipeline_dir, tmp_path, count):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    strat._fit_started = 0.0
    strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(uploads["b"], "b", count)], [])
    refused = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert [e["client"] for e in refused] == ["b"] and f"claims {count} training examples" in refused[0]["reason"]


def test_missing_or_refused_clients_leave_their_domain_out(uploads, tiny_pipeline_dir, tmp_path):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path, domains=["a", "b", "c"])
    strat.sampled = ["a", "b", "c"]
    strat._fit_started = 0.0
    bad = fit_res(_corrupt(uploads["b"], "nan"), "b")
    parameters, _ = strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), bad], [RuntimeError("client c raised")])
    assert parameters is not None
    assert strat.server.synthetic.sources == ["a"] * 12
    left_out = {e["domain"]: e["reason"] for e in recorder.events if e["kind"] == "domain_left_out"}
    assert set(left_out) == {"b", "c"}
    assert left_out["b"].startswith("upload refused") and "NaN" in left_out["b"]
    assert left_out["c"] == "failed: client c raised"
    row = next(r for r in recorder.rounds if r["round"] == 0)
    assert (row["clients_accepted"], row["clients_refused"], row["clients_failed"]) == (1, 1, 1)


@pytest.mark.parametrize("name", ["intruder", "../../escape", ".hidden"])
def test_round_zero_refuses_unexpected_client_names(uploads, tiny_pipeline_dir, tmp_path, name):
    domains = ["a", "../../escape", ".hidden"] if name != "intruder" else ["a"]
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path, domains=domains)
    strat._fit_started = 0.0
    strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(uploads["b"], name)], [])
    refused = [e for e in recorder.events if e["kind"] == "upload_refused"]
    assert [e["client"] for e in refused] == [name]
    assert not list((tmp_path / "run").rglob("*escape*")) and not (tmp_path / "escape.png").exists()


def test_round_zero_with_too_few_valid_uploads_stops_with_one_line(uploads, tiny_pipeline_dir, tmp_path, capsys):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path, **{"train.min-fit-clients": 2}), tmp_path,
                               domains=["a", "b"])
    strat._fit_started = 0.0
    with pytest.raises(SystemExit) as info:
        strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(_corrupt(uploads["b"], "nan"), "b")], [])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("FederationError: round 0 got 1 valid upload(s) (a), fewer than train.min-fit-clients = 2")
    assert [e["domain"] for e in recorder.events if e["kind"] == "domain_left_out"] == ["b"]
