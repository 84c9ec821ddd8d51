"""Server checkpoints: after every round, the global model, the round, the strategy state, the run history and
the random states, written atomically to ``<run dir>/checkpoints/round-<round>.npz``; a resumed run loads the newest
readable one. Files and log lines name the algorithm round (WarmFed's upload round is 0), as metrics.json and
summary.md do; Flower's server round is one more for WarmFed and FGL.

A checkpoint is one ``.npz`` file of plain arrays plus a JSON document stored as UTF-8 bytes: loading it never
unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmfed_flwr.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = 1
KEEP = 3
_NAME = re.compile(r"^round-(\d+)\.npz$")


def checkpoint_dir(run_directory: Path) -> Path:
    """Where the checkpoints of the run writing to ``run_directory`` live."""
    return run_directory / "checkpoints"


@dataclass
class RandomState:
    """Python, NumPy and torch (CPU and CUDA) random generator states."""

    python: tuple[Any, ...]
    numpy: tuple[Any, ...]
    torch: np.ndarray
    cuda: list[np.ndarray]

    @classmethod
    def capture(cls) -> RandomState:
        """The states of the process's global generators now."""
        cuda = [s.numpy() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state().numpy(), cuda)

    def restore(self) -> None:
        """Put the global generators back in these states (CUDA ones only when the device count matches)."""
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(torch.from_numpy(self.torch))
        if self.cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(self.cuda):
            torch.cuda.set_rng_state_all([torch.from_numpy(s) for s in self.cuda])


@dataclass
class Checkpoint:
    """Everything the server needs to continue a run after ``server_round``."""

    server_round: int
    algorithm_round: int
    weights: list[np.ndarray]
    strategy_state: dict[str, Any]
    history: dict[str, Any]
    random_state: RandomState


def _to_arrays(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    rng = checkpoint.random_state
    version, internal, gauss = rng.python
    name, key, pos, has_gauss, cached = rng.numpy
    meta = {
        "format": FORMAT,
        "server_round": checkpoint.server_round,
        "algorithm_round": checkpoint.algorithm_round,
        "num_weights": len(checkpoint.weights),
        "strategy_state": checkpoint.strategy_state,
        "history": checkpoint.history,
        "random": {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss),
                                                                          float(cached)],
                   "num_cuda": len(rng.cuda)},
    }
    arrays = {f"weight_{i:04d}": np.asarray(w) for i, w in enumerate(checkpoint.weights)}
    arrays.update({"random_numpy": np.asarray(key), "random_torch": rng.torch})
    arrays.update({f"random_cuda_{i}": s for i, s in enumerate(rng.cuda)})
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise CheckpointError(f"checkpoint array '{name}' holds Python objects; only plain arrays are saved")
    text = json.dumps(meta, default=float)
    arrays["meta"] = np.frombuffer(text.encode(), dtype=np.uint8)
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray]) -> Checkpoint:
    meta = json.loads(bytes(arrays["meta"]).decode())
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    version, internal, gauss = meta["random"]["python"]
    name, pos, has_gauss, cached = meta["random"]["numpy"]
    rng = RandomState(
        python=(version, tuple(internal), gauss),
        numpy=(name, arrays["random_numpy"], pos, has_gauss, cached),
        torch=arrays["random_torch"],
        cuda=[arrays[f"random_cuda_{i}"] for i in range(meta["random"]["num_cuda"])],
    )
    weights = [arrays[f"weight_{i:04d}"] for i in range(meta["num_weights"])]
    return Checkpoint(meta["server_round"], meta["algorithm_round"], weights, meta["strategy_state"],
                      meta["history"], rng)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint stored at ``path``; a truncated, corrupt or foreign file raises CheckpointError."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        checkpoint = _from_arrays(arrays)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); delete it to use an older one"
        ) from None
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != checkpoint.algorithm_round:
        raise CheckpointError(f"checkpoint {path} holds round {checkpoint.algorithm_round}, not its file name's")
    return checkpoint


class CheckpointStore:
    """The checkpoints of one run, one file per round, keeping the newest ``keep``."""

    def __init__(self, directory: Path, keep: int = KEEP) -> None:
        self.directory = directory
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, newest round first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically (temporary file, fsync, rename) and drop all but the newest few."""
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = _to_arrays(checkpoint)
        path = self.directory / f"round-{checkpoint.algorithm_round:04d}.npz"
        for stale in self.directory.glob(".round-*.tmp"):
            stale.unlink(missing_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.stem}-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_directory(self.directory)
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        logger.info("checkpoint of round %d written to %s", checkpoint.algorithm_round, path)
        return path

    def load_newest(self) -> Checkpoint:
        """The newest readable checkpoint; unreadable newer ones are skipped with a warning."""
        paths = self.paths()
        if not paths:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}; start the run without resume")
        problems = []
        for path in paths:
            try:
                checkpoint = read_checkpoint(path)
            except CheckpointError as exc:
                logger.warning("%s", exc)
                problems.append(str(exc))
                continue
            logger.info("resuming from %s (round %d)", path, checkpoint.algorithm_round)
            return checkpoint
        raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(problems))

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run with the same directory, so a fresh run never resumes them."""
        for path in self.paths():
            path.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
