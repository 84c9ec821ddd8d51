"""Cache entries that heal: an unreadable entry is a miss (removed with one warning, then rebuilt by its caller), and
every npz entry is written atomically (a temporary file in the same folder, renamed into place)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")
ArrayCheck = Callable[[dict[str, np.ndarray]], None]
"""Raises KeyError or ValueError when loaded arrays are not what the cache entry must hold."""

UNREADABLE = (EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile, zlib.error)
"""What reading a truncated, empty or foreign cache entry raises (a PermissionError, an OSError too, is not one)."""


def read_or_miss(path: Path, read: Callable[[Path], T]) -> T | None:
    """``read(path)``; None when ``path`` is missing, or when ``read`` finds it unreadable (truncated, empty, wrong
    format, missing or misshapen arrays: one of :data:`UNREADABLE`). An unreadable entry (file or folder) is removed
    with one warning line, for the caller to rebuild. PermissionError and every other error propagate."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        return None
    try:
        return read(path)
    except PermissionError:
        raise
    except UNREADABLE as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        log.warning("ignoring unreadable cache file %s (%s); removing it and rebuilding it", path, reason)
        _remove_unless_replaced(path, before)
        return None


def _remove_unless_replaced(path: Path, seen: os.stat_result) -> None:
    """Remove the entry at ``path`` unless another process already replaced it since ``seen``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino, now.st_mtime_ns) != (seen.st_dev, seen.st_ino, seen.st_mtime_ns):
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_npz(path: Path, check: ArrayCheck | None = None) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path`` (no pickle), passed through ``check`` when given."""
    stored = np.load(path, allow_pickle=False)
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise ValueError(f"it holds one {type(stored).__name__}, not an npz archive")
    with stored:
        arrays = {name: stored[name] for name in stored.files}
    if check is not None:
        check(arrays)
    return arrays


def load_npz(path: Path, check: ArrayCheck | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of the npz cache entry at ``path``, or None when it is missing or unreadable (then removed)."""
    return read_or_miss(path, lambda file: read_npz(file, check))


def save_npz_atomic(path: Path, *, compressed: bool = True, **arrays: np.ndarray) -> None:
    """Write an npz (compressed unless told otherwise) so that concurrent readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require_arrays(ndims: Mapping[str, int], paired: Iterable[str] = ()) -> ArrayCheck:
    """A check that the arrays hold every name of ``ndims`` with that many dimensions, and that the ``paired`` ones
    have the same length (e.g. images and their labels)."""
    paired = tuple(paired)

    def check(arrays: dict[str, np.ndarray]) -> None:
        for name, ndim in ndims.items():
            if name not in arrays:
                raise KeyError(f"no array {name!r}")
            if arrays[name].ndim != ndim:
                raise ValueError(f"array {name!r} has shape {arrays[name].shape}, not {ndim} dimensions")
        lengths = {name: len(arrays[name]) for name in paired}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arrays of different lengths {lengths}")

    return check
