"""Named arrays kept in a client's ``context.state`` across rounds (simulation and deployment), and their snapshots on
disk, so that a resumed run continues each client from its state as of the server checkpoint's round.

Flower keeps ``context.state`` for one run only. :class:`PersistentStateClient` writes the listed state keys after
every fit to ``<run dir>/checkpoints/clients/<client name>/round-<algorithm round>.npz`` (atomically, the newest four
kept). A resumed run's server sends :data:`protocol.RESUME_FROM` (its checkpoint's algorithm round) with every
instruction; on its first message of the run the client restores its newest snapshot at or before that round and drops
later ones (written after the checkpoint, before the run was killed). A fresh run's first message clears them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.client import Client
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Scalar,
)

from warmfed_flwr.data.cache_files import UNREADABLE, read_npz, save_npz_atomic
from warmfed_flwr.errors import CheckpointError
from warmfed_flwr.records.checkpoint import KEEP, checkpoint_dir
from warmfed_flwr.runtime import one_line_errors
from warmfed_flwr.wire import protocol

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
KEEP_SNAPSHOTS = KEEP + 1
"""One more than the server keeps checkpoints: a resume that falls back to the oldest readable checkpoint still finds
the clients' state of its round, although clients may have saved one round past the newest checkpoint."""
RUN_STARTED = "client-state-run-started"
"""``context.state`` key set by a node's first message of a run, once its snapshots were cleared or restored."""
_SNAPSHOT = re.compile(r"^round-(\d+)\.npz$")
_META = "meta"
State = dict[str, dict[str, np.ndarray]]
"""Named arrays per ``context.state`` key."""


def load_arrays(context: Context, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key``, or None when nothing was stored yet."""
    if key not in context.state:
        return None
    record = context.state[key]
    return {name: record[name].numpy() for name in record}


def save_arrays(context: Context, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``key``, replacing what was there."""
    context.state[key] = ArrayRecord(array_dict={name: Array(np.asarray(a, order="C")) for name, a in arrays.items()})


def client_state_dir(run_directory: Path, client_name: str) -> Path:
    """Where the state snapshots of client ``client_name`` in the run writing to ``run_directory`` live."""
    return checkpoint_dir(run_directory) / "clients" / client_name


class ClientStateStore:
    """One client's state snapshots, one file per algorithm round of the fit that produced it."""

    def __init__(self, directory: Path, keep: int = KEEP_SNAPSHOTS) -> None:
        self.directory = directory
        self.keep = keep

    def rounds(self) -> list[int]:
        """Rounds with a snapshot, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SNAPSHOT.match(p.name)))

    def path(self, algo_round: int) -> Path:
        """The snapshot file of ``algo_round``."""
        return self.directory / f"round-{algo_round:04d}.npz"

    def save(self, algo_round: int, state: State) -> Path:
        """Write ``state`` as the snapshot of ``algo_round`` atomically, then keep only the newest few rounds."""
        meta = json.dumps({"format": SNAPSHOT_FORMAT, "round": algo_round, "keys": sorted(state)})
        arrays = {f"{key}/{name}": value for key, named in state.items() for name, value in named.items()}
        path = self.path(algo_round)
        save_npz_atomic(path, compressed=False, **arrays, **{_META: np.frombuffer(meta.encode(), dtype=np.uint8)})
        for old in self.rounds()[:-self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load(self, algo_round: int) -> State:
        """The snapshot of ``algo_round``; a missing, truncated, corrupt or foreign file raises CheckpointError."""
        path = self.path(algo_round)
        try:
            arrays = read_npz(path)
            meta = json.loads(bytes(arrays.pop(_META)).decode())
            if meta.get("format") != SNAPSHOT_FORMAT or meta.get("round") != algo_round:
                raise ValueError(f"format {meta.get('format')!r} of round {meta.get('round')!r}")
        except (*UNREADABLE, TypeError, AttributeError) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise CheckpointError(f"client state snapshot {path} is unreadable ({reason}); the client cannot resume "
                                  "exactly: run it again from the start (resume=false)") from None
        state: State = {key: {} for key in meta["keys"]}
        for entry, value in arrays.items():
            key, _, name = entry.rpartition("/")
            state[key][name] = value
        return state

    def restore_point(self, resume_from: int) -> int | None:
        """The newest round with a snapshot at or before ``resume_from`` (None: the client held no state then)."""
        return max((r for r in self.rounds() if r <= resume_from), default=None)

    def drop_after(self, algo_round: int) -> None:
        """Remove the snapshots of rounds after ``algo_round`` (fits a killed run did after its last checkpoint)."""
        for later in self.rounds():
            if later > algo_round:
                self.path(later).unlink(missing_ok=True)


def start_run(context: Context, store: ClientStateStore, resume_from: int | None) -> None:
    """On the node's first message of this run: restore the state as of ``resume_from``, or, for a fresh run
    (None), clear snapshots an earlier run of the same name left. Later messages change nothing."""
    if RUN_STARTED in context.state:
        return
    if resume_from is None:
        store.drop_after(-1)
    else:
        later = [r for r in store.rounds() if r > resume_from]
        restored = store.restore_point(resume_from)
        if restored is None and later:
            raise CheckpointError(f"client state as of round {resume_from} is gone from {store.directory} (only rounds "
                                  f"{later} are there); resume from a later checkpoint or start the run afresh")
        store.drop_after(resume_from)
        if restored is None:
            logger.warning("no client state at or before round %d in %s: the client starts with empty state",
                           resume_from, store.directory)
        else:
            for key, arrays in store.load(restored).items():
                save_arrays(context, key, arrays)
    context.state[RUN_STARTED] = ConfigRecord({protocol.RESUME_FROM: -1 if resume_from is None else resume_from})


def snapshot(context: Context, store: ClientStateStore, keys: tuple[str, ...], algo_round: int) -> None:
    """Write the ``keys`` held in ``context.state`` as the snapshot of ``algo_round`` (nothing when none is held)."""
    state = {key: arrays for key in keys if (arrays := load_arrays(context, key)) is not None}
    if state:
        store.save(algo_round, state)


def resume_round(config: dict[str, Scalar]) -> int | None:
    """The checkpoint round a resumed run's instruction names; None in a fresh run."""
    value = config.get(protocol.RESUME_FROM)
    return None if value is None else int(value)


class PersistentStateClient(Client):
    """Wraps a client so that its ``context.state`` entries under ``keys`` survive a resume (see the module)."""

    def __init__(self, inner: Client, context: Context, store: ClientStateStore, keys: tuple[str, ...]) -> None:
        self.inner = inner
        self.context = context
        self.store = store
        self.keys = keys

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        """The wrapped client's answer."""
        return self.inner.get_properties(ins)

    def get_parameters(self, ins: GetParametersIns) -> GetParametersRes:
        """The wrapped client's answer."""
        return self.inner.get_parameters(ins)

    def fit(self, ins: FitIns) -> FitRes:
        """Fit from the state of this run (restored on a resume), then snapshot it under the fit's round."""
        self.start_run(ins.config)
        result = self.inner.fit(ins)
        if result.status.code == Code.OK:
            snapshot(self.context, self.store, self.keys, int(ins.config[protocol.ROUND]))
        return result

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """Evaluate from the state of this run (restored on a resume)."""
        self.start_run(ins.config)
        return self.inner.evaluate(ins)

    @one_line_errors
    def start_run(self, config: dict[str, Scalar]) -> None:
        """:func:`start_run` for the instruction's config; a snapshot it cannot read stops the client in one line."""
        start_run(self.context, self.store, resume_round(config))
