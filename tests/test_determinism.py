"""The same command with the same seed gives the same results: two `flwr run`s of a tiny WarmFed + DSD on the shipped
foundation, each filling its own empty cache, write identical metrics (timings aside), adapters, synthetic images,
checkpoints and client states (docs/reproducibility.md)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import flwr_run

TIMING_KEYS = ("seconds", "time", "started", "finished", "date")
"""Keys whose values are wall-clock measurements or dates: the only things allowed to differ."""



def without_timings(value: Any) -> Any:
    """``value`` with every timing entry (by key) removed, recursively."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (lock files aside)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.suffix != ".lock"}


def checkpoint_record(meta: np.ndarray) -> dict[str, Any]:
    """A checkpoint's JSON record without timings and without the server process's global Python RNG state:
    Flower's and Ray's own code in that process draw from it a timing-dependent number of times, and the project
    never does (its samples use their own seeded generators, strategies/sampling.py)."""
    record = without_timings(json.loads(bytes(meta).decode()))
    if "random" in record:  # server checkpoints; client state snapshots hold no RNG state
        record["random"].pop("python")
    return record


def run_contents(run: Path) -> dict[str, Any]:
    """Every file of a run directory, timings removed: checkpoints as their arrays (their JSON record without
    timings), metrics.csv without its timing columns, summary.md without its stage-time rows, the rest as bytes."""
    metrics = json.loads((run / "metrics.json").read_text())
    stages = tuple(f"| {stage} |" for stage in metrics["time_seconds"])
    contents: dict[str, Any] = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = str(path.relative_to(run))
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                contents[name] = {key: checkpoint_record(arrays[key]) if key == "meta" else arrays[key].tobytes()
                                  for key in arrays.files}
        elif name == "metrics.json":
            contents[name] = without_timings(metrics)
        elif name == "metrics.csv":
            rows = list(csv.DictReader(io.StringIO(path.read_text())))
            contents[name] = [without_timings(row) for row in rows]
        elif name == "summary.md":
            contents[name] = [line for line in path.read_text().splitlines() if not line.startswith(stages)]
        else:
            contents[name] = path.read_bytes()
    return contents


def test_two_runs_of_one_command_give_identical_results(simulation, tmp_path):
    config = {"output-dir": str(tmp_path / "out"), "run-name": "run", "cache-dir": str(tmp_path / "cache"),
              "device": "cpu", "data.max-per-domain": 300, "train.local-epochs": 1,
              "lora.steps": 2, "lora.batch-size": 8,
              "synthesis.images-per-class": 4, "synthesis.steps": 2, "warmfed.warm-epochs": 1,
              "train.rounds": 2, "personalization.method": "dsd", "personalization.selector-steps": 10}
    runs = []
    for attempt in ("first", "second"):
        done = flwr_run(simulation, config, 4, 600)
        run = tmp_path / "out" / "run"
        assert (run / "metrics.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
        runs.append((file_digests(tmp_path / "cache"), run_contents(run)))
        (tmp_path / "out").rename(tmp_path / f"out-{attempt}")
        (tmp_path / "cache").rename(tmp_path / f"cache-{attempt}")
    (first_cache, first_run), (second_cache, second_run) = runs
    assert any("upload" in name for name in first_cache) and any("synthetic" in name for name in first_cache)
    assert first_cache == second_cache, "adapters, synthetic images and client data are byte-identical"
    assert {name for name in first_run if name.startswith("checkpoints/clients/")}, "client state is compared too"
    assert first_run.keys() == second_run.keys()
    differing = sorted(name for name in first_run if first_run[name] != second_run[name])
    assert differing == [], differing
