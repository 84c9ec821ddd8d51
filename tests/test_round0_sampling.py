"""Many clients: WarmFed's seeded round-0 sample, the fixed synthetic budget and the clients' compute time."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common import Code, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from torch.utils.data import TensorDataset

import clients.base as base_client_module
from clients import warmfed as warmfed_client_module
from clients.base import FederatedClient
from clients.warmfed import WarmFedClient
from strategies.warmfed import WarmFedStrategy
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import ClientSplit
from warmfed_flwr.generative.prompts import class_prompts, prompt_embeddings
from warmfed_flwr.learning.models import build_model
from warmfed_flwr.learning.training import get_weights
from warmfed_flwr.methods.round0_upload import round0_sample_size
from warmfed_flwr.methods.synthetic_set import synthetic_images_per_class
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.records.results import RunRecorder
from warmfed_flwr.wire import payload, protocol

CLASSES = ["zero", "one", "two"]
EIGHT = [f"c{i}" for i in range(8)]


def properties(name: str | None):
    """A node's get_properties: its client name, or no answer (None)."""
    def get_properties(ins, timeout, group_id):
        if name is None:
            raise TimeoutError("no reply")
        return GetPropertiesRes(Status(Code.OK, ""), {protocol.CLIENT_NAME: name})
    return get_properties


class FakeClientManager:
    """The parts of Flower's ClientManager the strategy uses; later rounds sample the clients given per round. Each
    node answers the client name ``names`` gives it (its node id by default)."""

    def __init__(self, cids: list[str], later_samples: list[list[str]] = (), names: dict | None = None) -> None:
        names = names or {cid: cid for cid in cids}
        self.clients = {cid: SimpleNamespace(cid=cid, get_properties=properties(names[cid])) for cid in cids}
        self.later_samples = [list(sample) for sample in later_samples]

    def wait_for(self, num_clients: int, timeout: float | None = None) -> bool:
        return True

    def num_available(self) -> int:
        return len(self.clients)

    def all(self) -> dict:
        return dict(self.clients)

    def sample(self, num_clients: int, min_num_clients: int | None = None) -> list:
        return [self.clients[cid] for cid in self.later_samples.pop(0)]


def fake_warm_start() -> SimpleNamespace:
    subset = {protocol.SYNTHETIC_IMAGES: np.zeros((3, 3, 4, 4), np.uint8),
              protocol.SYNTHETIC_LABELS: np.arange(3, dtype=np.int64)}
    return SimpleNamespace(upload_schema=lambda: {protocol.EMBEDDINGS: ((3, 4, 8), "float32")},
                           subset_arrays=lambda: subset)


def strategy(tmp_path, warm_start=None, domains=(), cfg=None, **overrides) -> tuple[WarmFedStrategy, RunRecorder]:
    cfg = cfg or resolve({"algorithm": "warmfed", "train.min-fit-clients": 2, **overrides})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    return WarmFedStrategy(cfg=cfg, recorder=recorder, num_rounds=3, warm_start=warm_start or fake_warm_start(),
                           domains=domains), recorder


def asked(strat: WarmFedStrategy, manager: FakeClientManager) -> list[str]:
    pairs = strat.configure_fit(1, ndarrays_to_parameters([]), manager)
    assert all(ins.config[protocol.STAGE] == protocol.STAGE_ROUND0_UPLOAD for _, ins in pairs)
    return sorted(client.cid for client, _ in pairs)


@pytest.mark.parametrize(("available", "fraction", "min_clients", "expected"), [
    (8, 0.5, 2, 4), (8, 0.1, 2, 2), (8, 1.0, 2, 8), (10, 0.3, 1, 3), (10, 0.31, 1, 4), (3, 0.5, 5, 3),
])
def test_round0_sample_size(available, fraction, min_clients, expected):
    assert round0_sample_size(available, fraction, min_clients) == expected


def test_round0_asks_a_sample_that_the_seed_fixes(tmp_path):
    strat, recorder = strategy(tmp_path, **{"warmfed.round0-fraction": 0.5})
    first = asked(strat, FakeClientManager(EIGHT))
    assert len(first) == 4 and set(first) <= set(EIGHT)
    assert strat.sampled and sorted(strat.sampled) == first
    assert recorder.rounds[0]["clients_sampled"] == 4
    again = asked(strategy(tmp_path / "again", **{"warmfed.round0-fraction": 0.5})[0],
                  FakeClientManager(list(reversed(EIGHT))))
    assert again == first
    other_seeds = {tuple(asked(strategy(tmp_path / str(seed), **{"warmfed.round0-fraction": 0.5, "seed": seed})[0],
                               FakeClientManager(EIGHT))) for seed in range(1, 6)}
    assert other_seeds - {tuple(first)}, "the seed chooses the sample"
    (event,) = [e for e in recorder.events if e["kind"] == "clients_not_sampled"]
    assert event["round"] == 0
    assert event["clients"] == [cid for cid in EIGHT if cid not in first]
    assert "warmfed.round0-fraction = 0.5 asked 4 of 8 clients" in event["reason"]


def test_round0_samples_the_same_client_names_whatever_their_node_ids(tmp_path):
    """Flower gives the nodes new ids in every run: the seed picks client names, and a silent node keeps its id."""
    names = [f"client-{i}" for i in range(8)]
    picked = []
    for run, ids in enumerate([[f"{7 - i}" for i in range(8)], [f"{1000 + 37 * i % 11}" for i in range(8)]]):
        strat, recorder = strategy(tmp_path / str(run), **{"warmfed.round0-fraction": 0.5})
        manager = FakeClientManager(ids, names=dict(zip(ids, names, strict=True)))
        by_id = dict(zip(ids, names, strict=True))
        picked.append(sorted(by_id[cid] for cid in asked(strat, manager)))
        (event,) = [e for e in recorder.events if e["kind"] == "clients_not_sampled"]
        assert event["clients"] == sorted(set(names) - set(picked[-1]))
    assert picked[0] == picked[1] and len(picked[0]) == 4
    strat, recorder = strategy(tmp_path / "silent", **{"warmfed.round0-fraction": 0.5, "train.min-fit-clients": 1})
    chosen = asked(strat, FakeClientManager(["9", "8"], names={"9": "client-0", "8": None}))
    (event,) = [e for e in recorder.events if e["kind"] == "clients_not_sampled"]
    named = {"9": "client-0", "8": "node 8"}
    assert sorted([named[cid] for cid in chosen] + event["clients"]) == ["client-0", "node 8"]


def test_round0_fraction_below_min_fit_clients_asks_min_fit_clients(tmp_path):
    strat, recorder = strategy(tmp_path, **{"warmfed.round0-fraction": 0.1, "train.min-fit-clients": 3})
    assert len(asked(strat, FakeClientManager(EIGHT))) == 3
    assert recorder.rounds[0]["clients_sampled"] == 3


def test_round0_fraction_one_asks_every_client_and_records_no_event(tmp_path):
    strat, recorder = strategy(tmp_path)
    assert asked(strat, FakeClientManager(EIGHT)) == EIGHT
    assert not [e for e in recorder.events if e["kind"] == "clients_not_sampled"]


def _has_subset(ins) -> bool:
    return protocol.SYNTHETIC_IMAGES in payload.decode(parameters_to_ndarrays(ins.parameters))


def test_a_client_left_out_of_round0_gets_the_subset_in_its_first_later_round(tmp_path):
    strat, _ = strategy(tmp_path, **{"warmfed.round0-fraction": 0.5})
    later = [["c0", "c1"], ["c1", "c2", "c3"], list(EIGHT)]
    manager = FakeClientManager(EIGHT, later)
    round0 = set(asked(strat, manager))
    model = ndarrays_to_parameters([np.zeros(3, np.float32)])
    served: set[str] = set()
    for server_round in (2, 3, 4):
        for client, ins in strat.configure_fit(server_round, model, manager):
            assert _has_subset(ins) == (client.cid not in served), (server_round, client.cid)
            served.add(client.cid)
    assert served == set(EIGHT) and set(EIGHT) - round0, "some clients joined after round 0"


@pytest.mark.parametrize(("total", "clients", "classes", "default", "expected"), [
    (1200, 4, 10, 30, 30), (1200, 64, 10, 30, 1), (1200, 1000, 10, 30, 1), (0, 64, 10, 30, 30), (7, 2, 3, 30, 1),
])
def test_synthetic_images_per_class(total, clients, classes, default, expected):
    assert synthetic_images_per_class(total, clients, classes, default) == expected


# --- the fixed budget through the tiny generator -------------------------------------------------------------------

def tiny_config(tiny_pipeline_dir, tmp_path, **overrides):
    return resolve({"algorithm": "warmfed", "generator.base": str(tiny_pipeline_dir), "lora.enabled": False,
                    "synthesis.images-per-class": 4, "synthesis.steps": 2, "synthesis.batch-size": 12,
                    "synthesis.subset-ratio": 0.5, "synthesis.quality-check": False, "warmfed.warm-epochs": 1,
                    "cache-dir": str(tmp_path / "cache"), "device": "cpu", "train.min-fit-clients": 1, **overrides})


def tiny_warm_start(cfg, tmp_path) -> SyntheticWarmStart:
    return SyntheticWarmStart(cfg, CLASSES, torch.device("cpu"), tmp_path / "cache", tmp_path / "run")


def prompts_only(warm_start: SyntheticWarmStart) -> dict[str, np.ndarray]:
    prompts = class_prompts(warm_start.cfg.generator.prompt_template, CLASSES)
    return {protocol.EMBEDDINGS: prompt_embeddings(warm_start.generator(), prompts).float().numpy()}


def per_client_class_counts(warm_start: SyntheticWarmStart) -> dict[str, list[int]]:
    sources = np.array(warm_start.synthetic.sources)
    return {client: torch.bincount(warm_start.synthetic.labels[torch.from_numpy(sources == client)]).tolist()
            for client in dict.fromkeys(warm_start.synthetic.sources)}


def test_round0_synthesizes_the_budget_from_the_sampled_clients_and_names_the_others(tiny_pipeline_dir, tmp_path):
    cfg = tiny_config(tiny_pipeline_dir, tmp_path, **{"synthesis.total-images": 13, "warmfed.round0-fraction": 0.5})
    strat, recorder = strategy(tmp_path, tiny_warm_start(cfg, tmp_path), domains=["a", "b", "c", "d"], cfg=cfg)
    upload = prompts_only(strat.warm_start)
    chosen = asked(strat, FakeClientManager(["a", "b", "c", "d"]))
    results = [(SimpleNamespace(cid=name), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(payload.encode(upload)),
                                                  24, {protocol.CLIENT_NAME: name})) for name in chosen]
    strat._fit_started = 0.0
    assert strat.aggregate_fit(1, results, [])[0] is not None
    assert per_client_class_counts(strat.warm_start) == {name: [2, 2, 2] for name in chosen}  # 13 // (2 x 3)
    row = next(r for r in recorder.rounds if r["round"] == 0)
    assert (row["clients_sampled"], row["synthetic_images"], row["synthetic_images_per_class"]) == (2, 12, 2)
    left_out = {e["domain"]: e["reason"] for e in recorder.events if e["kind"] == "domain_left_out"}
    assert set(left_out) == {"a", "b", "c", "d"} - set(chosen)
    assert all(reason.startswith("not sampled (warmfed.round0-fraction = 0.5 asked 2 of 4 clients")
               for reason in left_out.values())


def test_a_budget_change_never_reuses_the_cached_synthetic_set(tiny_pipeline_dir, tmp_path):
    per_class = tiny_warm_start(tiny_config(tiny_pipeline_dir, tmp_path), tmp_path)
    upload = prompts_only(per_class)
    per_class.build_synthetic([("a", upload), ("b", upload)])
    budget = tiny_warm_start(tiny_config(tiny_pipeline_dir, tmp_path, **{"synthesis.total-images": 12}), tmp_path)
    budget.build_synthetic([("a", upload), ("b", upload)])
    assert per_client_class_counts(per_class) == {"a": [4, 4, 4], "b": [4, 4, 4]}
    assert per_client_class_counts(budget) == {"a": [2, 2, 2], "b": [2, 2, 2]}
    assert per_class.synthesis_keys["a"] != budget.synthesis_keys["a"]
    assert len(list((tmp_path / "cache" / "synthetic").glob("*.npz"))) == 4


# --- compute_seconds in the clients' fit metrics -----------------------------------------------------------------

def client(cls, tmp_path):
    cfg = resolve({"algorithm": "warmfed", "device": "cpu", "train.local-epochs": 1})
    images, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 3
    split = ClientSplit("a", "a", TensorDataset(images, labels), TensorDataset(images, labels))
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return cls(cfg, CLASSES, split, 0, context, torch.device("cpu"), tmp_path)


def slow(seconds: float, result):
    def work(*args, **kwargs):
        time.sleep(seconds)
        return result

    return work


def test_every_client_stage_reports_its_compute_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(base_client_module, "train_epochs", slow(0.05, 0.3))
    monkeypatch.setattr(warmfed_client_module, "globalize_client", slow(0.05, 0.3))
    monkeypatch.setattr(warmfed_client_module, "client_upload",
                        slow(0.05, ({protocol.EMBEDDINGS: np.zeros((3, 4, 8), np.float32)}, {})))
    weights = get_weights(build_model(resolve({}).model, len(CLASSES)))
    plain = client(FederatedClient, tmp_path).fit(weights, {protocol.ROUND: 1, protocol.TOTAL_ROUNDS: 3})[2]
    warm = client(WarmFedClient, tmp_path)
    upload = warm.fit([], {protocol.STAGE: protocol.STAGE_ROUND0_UPLOAD, protocol.ROUND: 0})[2]
    bundle = payload.encode(payload.with_prefix(payload.weights_to_named(weights), protocol.MODEL_PREFIX))
    globalize = warm.fit(bundle, {protocol.STAGE: protocol.STAGE_GLOBALIZE, protocol.ROUND: 1,
                                  protocol.TOTAL_ROUNDS: 3})[2]
    for metrics in (plain, upload, globalize):
        assert 0.05 <= metrics[protocol.COMPUTE_SECONDS] < 5.0
    assert warm.get_properties({}) == {protocol.CLIENT_NAME: "a"}, "the name the round-0 sample is drawn over"
