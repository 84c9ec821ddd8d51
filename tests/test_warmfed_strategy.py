"""WarmFed round 0 and globalization through the Strategy and client steps, without a Flower run."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from torch.utils.data import TensorDataset

from clients import warmfed as client_module
from clients.warmfed import WarmFedClient
from strategies.warmfed import WarmFedStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import ClientSplit, ImageArrayDataset
from warmfed_flwr.data.partition import MIXED_DOMAIN
from warmfed_flwr.errors import GeneratorError, PayloadError, RunStoppedError
from warmfed_flwr.generative.lora import adapter_schema
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.generative.synthesis import quantize, synthesis_key
from warmfed_flwr.learning.models import SmallCNN, seeded_model
from warmfed_flwr.learning.training import evaluate, get_weights, predict_logits, set_weights, train_epochs
from warmfed_flwr.methods import round0_upload, warmstart
from warmfed_flwr.methods.round0_upload import client_upload
from warmfed_flwr.methods.synthetic_set import balanced_subset
from warmfed_flwr.methods.warmstart import SyntheticWarmStart, globalize_client
from warmfed_flwr.records.results import SYNTHETIC_QUALITY_PREFIX, RunRecorder, summarize
from warmfed_flwr.wire import payload, protocol

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


def strategy(cfg, tmp_path, domains=(), **kwargs):
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", recorder.directory)
    return WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=3, warm_start=warm_start, domains=domains,
                           **kwargs), recorder


def test_warm_start_model_starts_from_the_seed_whatever_drew_before(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path)
    torch.manual_seed(0)
    first = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    torch.manual_seed(0)
    torch.rand(1000)  # as building the foundation in the same process does
    second = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
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
        named[key] = named[key].astype(np.int32)
    return named


CASES = {"missing-key": "lacks", "extra-key": "unexpected", "wrong-shape": "shape", "nan": "NaN",
         "embeddings-shape": "shape", "wrong-dtype": "dtype", "no-manifest": "no manifest",
         "oversize": "over the limit"}


def test_adapter_of_another_lora_rank_fails_the_round_zero_check(tiny_pipeline_dir, tmp_path):
    strat, _ = strategy(config(tiny_pipeline_dir, tmp_path, **{"lora.rank": 4}), tmp_path)
    expected = {name: np.zeros(shape, np.float32) for name, (shape, _dtype) in strat.round_zero_schema().items()}
    expected[protocol.EMBEDDINGS] = strat.class_prompt_embeddings()
    assert strat.check_upload(1, "b", fit_res(expected, "b")[1]).keys() == expected.keys()
    lower_rank = adapter_schema(strat.warm_start.generator(), strat.cfg.lora.model_copy(update={"rank": 2}))
    upload = {protocol.EMBEDDINGS: expected[protocol.EMBEDDINGS],
              **{protocol.ADAPTER_PREFIX + key: np.zeros(shape, np.float32) for key, (shape, _) in lower_rank.items()}}
    with pytest.raises(PayloadError, match="upload from b: .* has shape"):
        strat.check_upload(1, "b", fit_res(upload, "b")[1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_upload_is_refused_and_the_round_goes_on(uploads, tiny_pipeline_dir, tmp_path, case):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    good = fit_res(uploads["a"], "a")
    bad = fit_res(_corrupt(uploads["b"], case), "b")
    if case == "no-manifest":
        bad[1].parameters = ndarrays_to_parameters([np.zeros(4, np.float32)])
    if case == "oversize":
        strat.round_zero_schema()
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
    assert len(weights) == len(strat.warm_start.model.state_dict())
    assert strat.warm_start.synthetic.sources.count("a") == strat.warm_start.synthetic.sources.count("b") == 12
    assert (recorder.directory / "synthetic_a.png").exists() and (recorder.directory / "synthetic_b.png").exists()
    counts = torch.bincount(strat.warm_start.subset.tensors[1])
    assert counts.tolist() == [4, 4, 4]
    assert {"synthesis", "warm_start_training", "client_lora"} <= set(recorder.stage_seconds)


def test_lora_switch_off_sends_prompts_only(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"lora.enabled": False})
    named, timings = client_upload(cfg, split("a", 0), CLASSES, torch.device("cpu"), tmp_path)
    assert set(named) == {protocol.EMBEDDINGS} and "lora_seconds" not in timings
    strat, _ = strategy(cfg, tmp_path)
    assert set(strat.warm_start.upload_schema()) == {protocol.EMBEDDINGS}


def test_adapters_change_the_synthetic_images(uploads, tiny_pipeline_dir, tmp_path):
    warm_start = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)[0].warm_start
    with_adapter = warm_start.synthesize_client("a", uploads["a"], seed=0)[0]
    prompts = {protocol.EMBEDDINGS: uploads["a"][protocol.EMBEDDINGS]}
    prompts_only = warm_start.synthesize_client("a0", prompts, seed=0)[0]
    assert not np.array_equal(with_adapter, prompts_only)


def test_clients_with_identical_prompts_get_distinct_images(uploads, tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"lora.enabled": False})
    strat, _ = strategy(cfg, tmp_path)
    prompts = {protocol.EMBEDDINGS: uploads["a"][protocol.EMBEDDINGS]}
    synthetic = strat.warm_start.build_synthetic([("a", prompts), ("b", prompts)])
    half = len(synthetic.labels) // 2
    assert not np.array_equal(synthetic.images[:half], synthetic.images[half:])


def _globalize_bundle(strat, client_manager_clients, parameters):
    manager = SimpleNamespace(num_available=lambda: len(client_manager_clients),
                              sample=lambda num_clients, min_num_clients: client_manager_clients,
                              wait_for=lambda n, timeout=None: True,
                              all=lambda: {c.cid: c for c in client_manager_clients})
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
    tuned = strat.warm_start.finetune([w.copy() for w in weights], 1)
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
    assert strat.warm_start.synthetic.sources == ["a"] * 12
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
    with pytest.raises(RunStoppedError, match="^FederationError: round 0 got 1 valid upload"):
        strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(_corrupt(uploads["b"], "nan"), "b")], [])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("FederationError: round 0 got 1 valid upload(s) (a), fewer than train.min-fit-clients = 2")
    assert [e["domain"] for e in recorder.events if e["kind"] == "domain_left_out"] == ["b"]


# --- synthetic fine-tuning: BatchNorm statistics, learning-rate scale, client mode -----------------------------

def _bn_buffer_index(model: torch.nn.Module) -> list[int]:
    names = list(model.state_dict())
    return [i for i, k in enumerate(names) if k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                       "num_batches_tracked")]


def _synthetic_subset(n: int = 12, seed: int = 7) -> ImageArrayDataset:
    images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return ImageArrayDataset(images, np.arange(n) % 3)


@pytest.mark.parametrize("bn_stats", ["frozen", "update"])
def test_server_finetune_keeps_or_moves_batchnorm_statistics(tiny_pipeline_dir, tmp_path, bn_stats):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.syn-bn-stats": bn_stats})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    warm_start.subset = _synthetic_subset()
    bn = _bn_buffer_index(warm_start.model)
    weights = [w.copy() for w in get_weights(warm_start.model)]  # on the CPU get_weights aliases the model's tensors
    for i in bn:  # statistics "from real data": not the defaults a fresh model carries
        weights[i] = weights[i] + 0.5 if weights[i].dtype.kind == "f" else weights[i] + 3
    tuned = warm_start.finetune([w.copy() for w in weights], 1)
    assert len(bn) == 6
    same = [np.array_equal(weights[i], tuned[i]) for i in bn]
    assert all(same) if bn_stats == "frozen" else not any(same)
    params = [i for i in range(len(weights)) if i not in bn]
    assert any(not np.array_equal(weights[i], tuned[i]) for i in params)


def _record_train_epochs(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def fake(model, dataset, **kwargs):
        calls.append({"dataset": dataset, "len": len(dataset), **kwargs})
        return 0.25

    monkeypatch.setattr(warmstart, "train_epochs", fake)
    return calls


def test_server_finetune_scales_the_learning_rate(tiny_pipeline_dir, tmp_path, monkeypatch):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.syn-lr-scale": 0.25, "train.lr": 0.08})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    warm_start.subset = _synthetic_subset()
    calls = _record_train_epochs(monkeypatch)
    warm_start.finetune(get_weights(warm_start.model), 1)
    assert len(calls) == 1 and calls[0]["dataset"] is warm_start.subset
    assert calls[0]["lr"] == pytest.approx(0.02) and calls[0]["freeze_bn_stats"] is False


def _globalize_config(**overrides):
    return resolve({"device": "cpu", "train.lr": 0.08, "warmfed.syn-lr-scale": 0.5, "warmfed.client-syn-epochs": 2,
                    "train.local-epochs": 3, **overrides})


def test_client_syn_mode_before_trains_on_the_subset_then_on_private_data(monkeypatch):
    calls = _record_train_epochs(monkeypatch)
    private, subset = split("a", 0), _synthetic_subset()
    loss = globalize_client(SmallCNN(3), subset, private, _globalize_config(), torch.device("cpu"), seed=5)
    assert loss == 0.25
    assert [c["dataset"] for c in calls] == [subset, private.train]
    first, second = calls
    assert (first["epochs"], first["lr"], first["freeze_bn_stats"], first["seed"]) == (2, pytest.approx(0.04), False, 5)
    assert (second["epochs"], second["lr"], second.get("freeze_bn_stats", False), second["seed"]) == (3, 0.08, False, 6)


@pytest.mark.parametrize("client_syn", [True, False])
def test_client_syn_mode_mixed_is_one_pass_over_private_and_subset(monkeypatch, client_syn):
    calls = _record_train_epochs(monkeypatch)
    private, subset = split("a", 0), _synthetic_subset()
    cfg = _globalize_config(**{"warmfed.client-syn-mode": "mixed", "warmfed.client-syn-finetune": client_syn})
    globalize_client(SmallCNN(3), subset, private, cfg, torch.device("cpu"), seed=5)
    assert len(calls) == 1
    (call,) = calls
    assert (call["epochs"], call["lr"], call["seed"]) == (3, 0.08, 6)
    if not client_syn:
        assert call["dataset"] is private.train
        return
    assert call["len"] == len(private.train) + len(subset) == 36
    dataset = call["dataset"]
    for i in (0, len(private.train) - 1):
        assert all(torch.equal(a, b) for a, b in zip(dataset[i], private.train[i], strict=True))
    for i in (0, len(subset) - 1):
        assert all(torch.equal(a, b) for a, b in zip(dataset[len(private.train) + i], subset[i], strict=True))


def test_client_syn_mode_mixed_trains_a_real_model_differently_from_private_only():
    private, subset = split("a", 0), _synthetic_subset()
    results = {}
    for mode, client_syn in [("mixed", True), ("mixed", False)]:
        model = seeded_model(resolve({}).model, 3, seed=0)
        cfg = _globalize_config(**{"warmfed.client-syn-mode": mode, "warmfed.client-syn-finetune": client_syn,
                                   "train.local-epochs": 1})
        loss = globalize_client(model, subset, private, cfg, torch.device("cpu"), seed=5)
        assert np.isfinite(loss)
        results[client_syn] = get_weights(model)
    assert any(not np.array_equal(a, b) for a, b in zip(results[True], results[False], strict=True))


# --- round-0 upload cache ----------------------------------------------------------------------------------------

def _upload(cfg, cache, phrase="", data_seed=0):
    return client_upload(cfg, split("a", data_seed), CLASSES, torch.device("cpu"), cache, phrase)


def _assert_same_arrays(first: dict, second: dict) -> None:
    assert set(first) == set(second)
    for key in first:
        assert first[key].dtype == second[key].dtype
        np.testing.assert_array_equal(first[key], second[key])


def _counting_lora(monkeypatch) -> list:
    real, calls = round0_upload.fit_adapter, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("domain_phrase"))
        return real(*args, **kwargs)

    monkeypatch.setattr(round0_upload, "fit_adapter", counted)
    return calls


def test_client_upload_is_cached_and_repeated_exactly(tiny_pipeline_dir, tmp_path, monkeypatch):
    cfg = config(tiny_pipeline_dir, tmp_path)
    calls = _counting_lora(monkeypatch)
    first, timings = _upload(cfg, tmp_path)
    assert len(calls) == 1 and "lora_seconds" in timings
    assert len(list((tmp_path / "uploads").glob("*.npz"))) == 1

    def no_lora(*args, **kwargs):
        raise AssertionError("LoRA ran again although the upload is cached")

    monkeypatch.setattr(round0_upload, "fit_adapter", no_lora)
    second, _ = _upload(cfg, tmp_path)
    _assert_same_arrays(first, second)
    assert any(k.startswith(protocol.ADAPTER_PREFIX) for k in second)


@pytest.mark.parametrize("change", ["seed", "domain-phrase", "train-split", "lora-rank"])
def test_client_upload_cache_is_keyed_by_what_shapes_it(tiny_pipeline_dir, tmp_path, monkeypatch, change):
    cfg = config(tiny_pipeline_dir, tmp_path)
    calls = _counting_lora(monkeypatch)
    first, _ = _upload(cfg, tmp_path)
    if change == "seed":
        second, _ = _upload(config(tiny_pipeline_dir, tmp_path, seed=cfg.seed + 1), tmp_path)
    elif change == "domain-phrase":
        second, _ = _upload(cfg, tmp_path, phrase="svhn")
    elif change == "train-split":
        second, _ = _upload(cfg, tmp_path, data_seed=1)
    else:
        second, _ = _upload(config(tiny_pipeline_dir, tmp_path, **{"lora.rank": 2}), tmp_path)
    assert len(calls) == 2
    assert len(list((tmp_path / "uploads").glob("*.npz"))) == 2
    if change == "domain-phrase":
        assert calls == ["", "svhn"]
        assert not np.array_equal(first[protocol.EMBEDDINGS], second[protocol.EMBEDDINGS])
    if change == "seed":
        key = next(k for k in first if k.startswith(protocol.ADAPTER_PREFIX))
        assert not np.array_equal(first[key], second[key])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_upload_cache_is_made_again(tiny_pipeline_dir, tmp_path, monkeypatch, damage):
    cfg = config(tiny_pipeline_dir, tmp_path)
    calls = _counting_lora(monkeypatch)
    first, _ = _upload(cfg, tmp_path)
    (path,) = (tmp_path / "uploads").glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    second, _ = _upload(cfg, tmp_path)
    assert len(calls) == 2
    assert set(second) == set(first)
    with np.load(path, allow_pickle=False) as stored:  # rewritten whole
        assert set(stored.files) == set(first)
    third, _ = _upload(cfg, tmp_path)
    assert len(calls) == 2
    _assert_same_arrays(second, third)


# --- synthetic data quality ----------------------------------------------------------------------------------------

def test_round_zero_records_synthetic_quality_per_client(uploads, tiny_pipeline_dir, tmp_path, monkeypatch):
    """Each client's quality is the accuracy on its own test split of a judge trained on its synthetic images only."""
    cfg = config(tiny_pipeline_dir, tmp_path)
    tests = {"a": split("a", 0).test, "b": TensorDataset(*split("b", 1).test[:5])}
    trained, evaluated = [], []

    def train_spy(model, dataset, *args, **kwargs):
        trained.append((model, dataset))
        return train_epochs(model, dataset, *args, **kwargs)

    def evaluate_spy(model, dataset, device):
        result = evaluate(model, dataset, device)
        evaluated.append((model, dataset, result[1]))
        return result

    monkeypatch.setattr(warmstart, "train_epochs", train_spy)
    monkeypatch.setattr(warmstart, "evaluate", evaluate_spy)
    strat, recorder = strategy(cfg, tmp_path, quality_tests=tests)
    strat._fit_started = 0.0
    strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(uploads["b"], "b")], [])
    row = next(r for r in recorder.rounds if r["round"] == 0)
    quality = {k.removeprefix(SYNTHETIC_QUALITY_PREFIX): v for k, v in row.items()
               if k.startswith(SYNTHETIC_QUALITY_PREFIX)}
    assert set(quality) == {"a", "b"}
    sources = np.array(strat.warm_start.synthetic.sources)
    for client, test in tests.items():
        (judge, accuracy), = [(model, acc) for model, dataset, acc in evaluated if dataset is test]
        assert quality[client] == accuracy and accuracy * len(test) == pytest.approx(round(accuracy * len(test)))
        (images,) = [dataset for model, dataset in trained if model is judge]
        mine = np.flatnonzero(sources == client)
        assert len(images) == len(mine) == 4 * len(CLASSES) < len(sources), "its own synthetic images only"
        assert [int(images[i][1]) for i in range(len(images))] == strat.warm_start.synthetic.labels[mine].tolist()
    summary = summarize(recorder.rounds, cfg.to_flat(), recorder.stage_seconds)
    assert "## Synthetic data quality per client" in summary


def test_round_zero_without_quality_tests_records_no_quality(uploads, tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path)
    strat, recorder = strategy(cfg, tmp_path)
    strat._fit_started = 0.0
    strat.aggregate_fit(1, [fit_res(uploads["a"], "a")], [])
    row = next(r for r in recorder.rounds if r["round"] == 0)
    assert not any(k.startswith(SYNTHETIC_QUALITY_PREFIX) for k in row)
    assert "Synthetic data quality" not in summarize(recorder.rounds, cfg.to_flat(), recorder.stage_seconds)


def _separable(n: int, seed: int, shift: int = 0) -> TensorDataset:
    """Class k: channel k bright; labels shifted by ``shift`` (a wrong labelling when not 0)."""
    labels = torch.arange(n) % 3
    images = 0.1 * torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    images[torch.arange(n), labels] += 0.8
    return TensorDataset(images, (labels + shift) % 3)


def _uint8(dataset: TensorDataset) -> tuple[np.ndarray, torch.Tensor]:
    """A float TensorDataset as the server keeps synthetic images: uint8 [N, H, W, 3] and labels."""
    images, labels = dataset.tensors
    return np.ascontiguousarray(quantize(images).transpose(0, 2, 3, 1)), labels


def test_synthetic_quality_judges_each_client_by_its_own_images(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.warm-epochs": 8, "train.batch-size": 8})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    good, wrong = _separable(24, 0), _separable(24, 1, shift=1)
    warm_start._keep([("good", *_uint8(good)), ("wrong", *_uint8(wrong)), ("untested", *_uint8(good))])
    test = _separable(12, 2)
    quality = warm_start.synthetic_quality({"good": test, "wrong": test, "absent": test})
    assert set(quality) == {"good", "wrong"}
    assert quality["good"] >= 0.9 and quality["wrong"] <= 0.1


def test_summary_shows_synthetic_quality_per_client_and_mean():
    rounds = [{"round": 0, f"{SYNTHETIC_QUALITY_PREFIX}b": 0.25, f"{SYNTHETIC_QUALITY_PREFIX}a": 0.5},
              {"round": 1, f"{SYNTHETIC_QUALITY_PREFIX}a": 0.0}]
    lines = summarize(rounds, {"experiment": "warmfed"}, {}).splitlines()
    at = lines.index("## Synthetic data quality per client (%)")
    table = [line for line in lines[at:] if line.startswith("|")][:3]
    assert table == ["| a | b | mean |", "|---|---|---|", "| 50.00 | 25.00 | 37.50 |"]


# --- client domain phrase ------------------------------------------------------------------------------------------

def _client(domain: str, domain_prompts: bool, node_phrase: str = "") -> WarmFedClient:
    client = object.__new__(WarmFedClient)
    client.cfg = resolve({"generator.domain-prompts": domain_prompts})
    client.split = ClientSplit("client-0", domain, split("x", 0).train, split("x", 0).test)
    client.context = SimpleNamespace(node_config={"domain-phrase": node_phrase} if node_phrase else {})
    return client


@pytest.mark.parametrize(("domain", "domain_prompts", "expected"), [
    ("svhn", True, "svhn"), ("svhn", False, ""), (MIXED_DOMAIN, True, ""), (MIXED_DOMAIN, False, ""),
])
def test_default_domain_phrase(domain, domain_prompts, expected):
    assert MIXED_DOMAIN == "mixed"
    assert _client(domain, domain_prompts).default_domain_phrase() == expected


@pytest.mark.parametrize(("node_phrase", "domain_prompts", "expected"), [
    ("", True, "svhn"), ("street numbers", True, "street numbers"), ("street numbers", False, "street numbers"),
    ("", False, ""),
])
def test_round0_upload_sends_the_node_phrase_else_the_domain(monkeypatch, node_phrase, domain_prompts, expected):
    seen = []

    def fake_upload(cfg, split_, class_names, device, cache_dir, phrase):
        seen.append(phrase)
        return {protocol.EMBEDDINGS: np.zeros((3, 4, 8), np.float32)}, {}

    monkeypatch.setattr(client_module, "client_upload", fake_upload)
    client = _client("svhn", domain_prompts, node_phrase)
    client.class_names, client.device, client.cache_dir, client.partition_id = CLASSES, None, None, 0
    client.round0_upload()
    assert seen == [expected]


def test_server_ensemble_distillation_moves_towards_the_clients_mean_logits(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.server-ft-target": "ensemble", "warmfed.server-ft-epochs": 5})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    warm_start.subset = _synthetic_subset()
    start = [w.copy() for w in get_weights(warm_start.model)]
    teacher_model = copy.deepcopy(warm_start.model)
    torch.nn.init.zeros_(teacher_model.classifier[-1].weight)
    with torch.no_grad():
        teacher_model.classifier[-1].bias.copy_(torch.tensor([4.0, 0.0, 0.0]))  # a teacher that always says class 0
    teacher = [w.copy() for w in get_weights(teacher_model)]
    tuned = warm_start.finetune([w.copy() for w in start], 1, [teacher, teacher])
    set_weights(warm_start.model, tuned)
    predictions = predict_logits(warm_start.model, warm_start.subset, torch.device("cpu")).argmax(1)
    assert (predictions == 0).float().mean() > 0.9  # the subset's labels are 0, 1, 2 in turn: labels were not learnt


def test_server_ensemble_distillation_refuses_to_run_without_client_weights(tiny_pipeline_dir, tmp_path):
    cfg = config(tiny_pipeline_dir, tmp_path, **{"warmfed.server-ft-target": "ensemble"})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    warm_start.subset = _synthetic_subset()
    with pytest.raises(ValueError, match="server-ft-target = ensemble"):
        warm_start.finetune(get_weights(warm_start.model), 1)


@pytest.mark.parametrize("cross_attention_dim", [768, 1024])
def test_server_synthesizes_at_the_classifier_size_not_the_generator_size(tmp_path, cross_attention_dim):
    """An SD-shaped generator (VAE factor 8, 77 tokens, native 64 px) still yields data.image-size (32 px) images."""
    from tests.sd_shaped import build_sd_shaped_pipeline

    build_sd_shaped_pipeline(cross_attention_dim=cross_attention_dim).save_pretrained(tmp_path / "sd")
    cfg = config(tmp_path / "sd", tmp_path, **{"data.image-size": 32, "lora.enabled": False})
    warm_start = SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")
    assert warm_start.pipe.unet.config.sample_size * warm_start.pipe.vae_scale_factor == 64
    embeddings = prompt_embeddings(warm_start.pipe, class_prompts(cfg.generator.prompt_template, CLASSES)).numpy()
    assert embeddings.shape[1:] == (77, cross_attention_dim)
    images, labels = warm_start.synthesize_client("a", {protocol.EMBEDDINGS: embeddings}, seed=0)
    assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8


def test_round_zero_limit_follows_the_expected_upload(uploads, tiny_pipeline_dir, tmp_path):
    strat, _ = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    expected = payload.schema_bytes(strat.round_zero_schema())
    assert expected == sum(a.nbytes for a in uploads["a"].values())
    assert expected <= strat.max_upload_bytes <= expected * (1 + payload.UPLOAD_MARGIN)


def test_fp16_uploads_are_accepted_and_decoded_to_fp32(uploads, tiny_pipeline_dir, tmp_path):
    strat, recorder = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    half = payload.cast_floats(uploads["b"], "float16")
    assert sum(a.nbytes for a in half.values()) * 2 == sum(a.nbytes for a in uploads["b"].values())
    strat._fit_started = 0.0
    parameters, _ = strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(half, "b")], [])
    assert parameters is not None
    assert not [e for e in recorder.events if e["kind"] == "upload_refused"]
    key = strat.warm_start.synthesis_keys["b"]
    syn = strat.cfg.synthesis
    assert key == synthesis_key(
        torch.from_numpy(half[protocol.EMBEDDINGS].astype(np.float32)),
        {k: torch.from_numpy(v.astype(np.float32))
         for k, v in payload.split_prefix(half, protocol.ADAPTER_PREFIX).items()},
        strat.warm_start.generator_hash, 4, 2, 3.0, strat.cfg.seed * 1000 + 1, 32, syn.negative_prompt,
        syn.timestep_spacing, syn.batch_size)


def test_full_size_generator_on_a_cpu_fallback_is_refused_unless_cpu_is_forced(tiny_pipeline_dir, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(round0_upload, "CPU_LORA_MAX_PARAMETERS", 1000)
    auto = config(tiny_pipeline_dir, tmp_path, device="auto")
    with pytest.raises(GeneratorError, match="client-resources-num-gpus.*device='cpu'"):
        client_upload(auto, split("a", 0), CLASSES, torch.device("cpu"), tmp_path)
    forced = config(tiny_pipeline_dir, tmp_path, device="cpu")
    named, _ = client_upload(forced, split("a", 0), CLASSES, torch.device("cpu"), tmp_path)
    assert payload.split_prefix(named, protocol.ADAPTER_PREFIX)


def test_server_releases_its_generator_after_round_zero(uploads, tiny_pipeline_dir, tmp_path):
    strat, _ = strategy(config(tiny_pipeline_dir, tmp_path), tmp_path)
    strat._fit_started = 0.0
    strat.aggregate_fit(1, [fit_res(uploads["a"], "a"), fit_res(uploads["b"], "b")], [])
    assert strat.warm_start.pipe is None
    with pytest.raises(GeneratorError, match="released its generator"):
        strat.warm_start.upload_schema()
