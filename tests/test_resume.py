"""Server checkpoints: the store and the strategy wrapper (a SIGKILLed run: tests/test_client_state_resume.py)."""

import logging
import random
import re

import numpy as np
import pytest
import torch
from flwr.common import parameters_to_ndarrays

from benchmarks.harness import (
    read_metrics,
)
from strategies.baselines import FedAvgStrategy
from strategies.checkpointing import with_checkpoints
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.errors import CheckpointError, ConfigError
from warmfed_flwr.generative.synthesis import cached_synthesis
from warmfed_flwr.methods.warmstart import SyntheticWarmStart
from warmfed_flwr.records.checkpoint import Checkpoint, CheckpointStore, RandomState, checkpoint_dir, read_checkpoint
from warmfed_flwr.records.results import RunRecorder


def checkpoint(server_round: int, **state) -> Checkpoint:
    weights = [np.full((3, 2), server_round, dtype=np.float32), np.arange(4, dtype=np.int64)]
    history = {"rounds": [{"round": server_round, "global_acc_pooled": 0.5, "train_loss": float("nan")}],
               "events": [], "stage_seconds": {"synthesis": 1.5}, "elapsed_seconds": 3.0}
    return Checkpoint(server_round, server_round - 1, weights, state, history, RandomState.capture())


def test_round_trip_keeps_weights_state_history_and_random_streams(tmp_path):
    store = CheckpointStore(tmp_path)
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    saved = checkpoint(2, synthesis=[["mnist", "ab12"]], subset_index=[0, 5])
    store.save(saved)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = store.load_newest()
    assert loaded.server_round == 2 and loaded.algorithm_round == 1
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded.weights, saved.weights, strict=True))
    assert loaded.strategy_state == {"synthesis": [["mnist", "ab12"]], "subset_index": [0, 5]}
    assert loaded.history["stage_seconds"] == {"synthesis": 1.5}
    assert np.isnan(loaded.history["rounds"][0]["train_loss"])
    loaded.random_state.restore()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_newest_wins_and_only_the_newest_few_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for server_round in (1, 2, 10, 3, 4):
        store.save(checkpoint(server_round))
    assert [p.name for p in store.paths()] == ["round-0009.npz", "round-0003.npz", "round-0002.npz"]
    assert store.load_newest().server_round == 10


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(checkpoint(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0000.npz"]
    assert store.load_newest().server_round == 1


def test_a_corrupt_newest_file_is_skipped_with_a_clear_message(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    newest = store.save(checkpoint(2))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {newest} is unreadable"):
        read_checkpoint(newest)
    assert store.load_newest().server_round == 1
    assert f"checkpoint {newest} is unreadable" in caplog.text
    (tmp_path / "round-0000.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=f"no readable checkpoint in {tmp_path}"):
        store.load_newest()


def test_files_and_log_lines_number_rounds_as_metrics_and_summary_do(tmp_path, caplog):
    """WarmFed's last server round 6 is its round 5 in metrics.json and summary.md: the checkpoint says 5 too."""
    caplog.set_level(logging.INFO, logger="warmfed_flwr.records.checkpoint")
    store = CheckpointStore(tmp_path)
    path = store.save(checkpoint(6))
    assert path.name == "round-0005.npz"
    assert f"checkpoint of round 5 written to {path}" in caplog.text
    store.load_newest()
    assert f"resuming from {path} (round 5)" in caplog.text
    assert "round 6" not in caplog.text
    path.rename(tmp_path / "round-0006.npz")
    with pytest.raises(CheckpointError, match="holds round 5, not its file name's"):
        read_checkpoint(tmp_path / "round-0006.npz")


def test_nothing_is_ever_pickled(tmp_path):
    store = CheckpointStore(tmp_path)
    bad = checkpoint(1)
    bad.weights.append(np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="holds Python objects"):
        store.save(bad)
    path = store.save(checkpoint(2))
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["weight_0000"] = np.array([{"a": 1}], dtype=object)  # a pickled object smuggled into the file
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="unreadable.*allow_pickle=False"):
        read_checkpoint(path)


def test_missing_checkpoint_names_the_directory(tmp_path):
    cfg = resolve({"algorithm": "fedavg", "run-name": "gone", "resume": True, "output-dir": str(tmp_path)})
    strategy = FedAvgStrategy(cfg=cfg, recorder=RunRecorder(tmp_path / "gone", cfg.to_flat()), num_rounds=2)
    directory = re.escape(str(tmp_path / "gone" / "checkpoints"))
    with pytest.raises(CheckpointError, match=f"no checkpoint to resume from in {directory}; start the run without"):
        with_checkpoints(strategy, resume=True)


def test_resume_restores_the_record_and_skips_the_rounds_done(tmp_path):
    cfg = resolve({"algorithm": "fedavg", "run-name": "run", "output-dir": str(tmp_path)})
    recorder = RunRecorder(tmp_path / "run", cfg.to_flat())
    recorder.record_round(2, {"global_acc_pooled": 0.9})  # recorded after the checkpoint: dropped on resume
    CheckpointStore(checkpoint_dir(recorder.directory)).save(checkpoint(1))
    wrapped = with_checkpoints(FedAvgStrategy(cfg=cfg, recorder=recorder, num_rounds=2), resume=True)
    assert [r["round"] for r in read_metrics(recorder.directory)["rounds"]] == [1]
    assert wrapped.configure_fit(1, None, None) == [] and wrapped.configure_evaluate(1, None, None) == []
    assert np.array_equal(parameters_to_ndarrays(wrapped.initialize_parameters(None))[0], np.full((3, 2), 1))
    assert read_metrics(recorder.directory)["events"] == [] and wrapped.inner.recorder.events[0]["kind"] == "resumed"
    fresh = with_checkpoints(FedAvgStrategy(cfg=cfg, recorder=recorder, num_rounds=2), resume=False)
    assert fresh.store.paths() == [], "a fresh run of the same name drops the old checkpoints"


def test_centralized_cannot_resume():
    with pytest.raises(ConfigError, match="'resume' = true is not supported for 'algorithm' = 'centralized'"):
        resolve({"algorithm": "centralized", "run-name": "r", "resume": True})


def test_warm_start_state_reloads_from_the_cache_or_names_the_missing_entry(tiny_pipeline_dir, tmp_path):
    cfg = resolve({"generator.base": str(tiny_pipeline_dir), "cache-dir": str(tmp_path), "device": "cpu"})
    cache = tmp_path / "synthetic"
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    for key in ("a" * 64, "b" * 64):
        cached_synthesis(cache, key, lambda: [(images, labels)])
    state = {"synthesis": [["mnist", "a" * 64], ["fonts", "b" * 64]], "subset_index": [0, 7]}
    warm_start = SyntheticWarmStart(cfg, ["zero", "one", "two"], torch.device("cpu"), tmp_path, tmp_path / "run")
    warm_start.restore_checkpoint_state(state)
    assert warm_start.synthetic.sources == ["mnist"] * 6 + ["fonts"] * 6
    assert warm_start.subset.tensors[1].tolist() == [0, 1]
    assert warm_start.checkpoint_state() == state
    (cache / f"{'b' * 64}.npz").unlink()
    with pytest.raises(CheckpointError, match=f"synthetic set of client fonts is gone from the cache \\({cache}"):
        warm_start.restore_checkpoint_state(state)
