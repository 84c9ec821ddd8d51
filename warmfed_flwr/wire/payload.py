"""Named-tensor codec over the flat array lists a NumPyClient exchanges, with a checked manifest.

A bundle is ``[manifest, a_1, ..., a_n]`` where ``manifest`` is UTF-8 JSON in a uint8 array
listing each entry's name, shape and dtype. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from warmfed_flwr.errors import ConfigError, PayloadError
from warmfed_flwr.wire import protocol

FORMAT = "warmfed-bundle/1"
ALLOWED_DTYPES = frozenset({"float32", "float16", "int64", "int32", "uint8", "bool"})
Schema = Mapping[str, tuple[tuple[int, ...], str]]
"""name -> (shape, dtype) an upload must match."""


def encode(named: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Pack named arrays into a manifest-led list of arrays."""
    entries, arrays = [], []
    for name, value in named.items():
        array = np.asarray(value, order="C")
        if array.dtype.name not in ALLOWED_DTYPES:
            raise PayloadError(f"entry '{name}' has dtype {array.dtype.name}; cast to one of {sorted(ALLOWED_DTYPES)}")
        entries.append({"name": name, "shape": list(array.shape), "dtype": array.dtype.name})
        arrays.append(array)
    manifest = json.dumps({"format": FORMAT, "entries": entries}).encode()
    return [np.frombuffer(manifest, dtype=np.uint8), *arrays]


def decode(arrays: Sequence[np.ndarray], sender: str = "peer") -> dict[str, np.ndarray]:
    """Unpack a bundle, checking every array against the manifest."""
    if not arrays or arrays[0].dtype != np.uint8 or arrays[0].ndim != 1:
        raise PayloadError(f"upload from {sender} has no manifest; it was not made by payload.encode")
    try:
        manifest = json.loads(arrays[0].tobytes().decode())
        entries = manifest["entries"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"upload from {sender} has an unreadable manifest ({exc})") from exc
    body = arrays[1:]
    if len(entries) != len(body):
        raise PayloadError(f"upload from {sender} lists {len(entries)} entries but carries {len(body)} arrays")
    named: dict[str, np.ndarray] = {}
    for entry, array in zip(entries, body, strict=True):
        name = entry.get("name")
        if not isinstance(name, str) or name in named:
            raise PayloadError(f"upload from {sender} has a missing or repeated entry name {name!r}")
        if list(array.shape) != entry.get("shape") or array.dtype.name != entry.get("dtype"):
            raise PayloadError(
                f"upload from {sender}: entry '{name}' is {array.dtype.name}{list(array.shape)}, "
                f"manifest says {entry.get('dtype')}{entry.get('shape')}"
            )
        named[name] = array
    return named


UPLOAD_MARGIN = 0.05
"""Round-0 uploads may exceed the size of their expected schema (fp32) by this share before they are refused."""
WIRE_FLOATS = {"float32": ("float32", "float16")}
"""Schema dtype -> dtypes accepted on the wire (fp16 halves an upload; it is decoded to fp32)."""


def schema_bytes(schema: Schema) -> int:
    """Bytes of an upload that matches ``schema`` exactly."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in schema.values())


def upload_limit(schema: Schema, hard_cap_bytes: int) -> int:
    """The round-0 size limit: ``schema``'s size plus UPLOAD_MARGIN, never above ``hard_cap_bytes``.

    Raises ConfigError when even an exact upload would exceed the cap, so a run stops before clients train.
    """
    expected = schema_bytes(schema)
    if expected > hard_cap_bytes:
        raise ConfigError(
            f"round-0 uploads for this generator and LoRA config are {expected / 2**20:.1f} MiB, over "
            f"synthesis.max-upload-mb = {hard_cap_bytes / 2**20:g}; raise it to at least "
            f"{math.ceil(expected * (1 + UPLOAD_MARGIN) / 2**20)}, or send fp16 (synthesis.upload-dtype = 'float16')"
        )
    return min(hard_cap_bytes, int(expected * (1 + UPLOAD_MARGIN)))


def cast_floats(named: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Every floating-point entry cast to ``dtype`` (what a client sends), the others unchanged."""
    return {k: v.astype(dtype, copy=False) if v.dtype.kind == "f" else v for k, v in named.items()}


def validate(named: Mapping[str, np.ndarray], schema: Schema, sender: str, max_bytes: int) -> None:
    """Refuse an upload whose size, keys, shapes, dtypes or values differ from ``schema``.

    A float32 entry may travel as float16 (WIRE_FLOATS); decode it with ``cast_floats(named, 'float32')``.
    """
    size = sum(a.nbytes for a in named.values())
    if size > max_bytes:
        raise PayloadError(f"upload from {sender} is {size} bytes, over the limit of {max_bytes}")
    missing = sorted(set(schema) - set(named))
    if missing:
        raise PayloadError(f"upload from {sender} lacks {len(missing)} expected entries, e.g. '{missing[0]}'")
    extra = sorted(set(named) - set(schema))
    if extra:
        raise PayloadError(f"upload from {sender} has {len(extra)} unexpected entries, e.g. '{extra[0]}'")
    for name, (shape, dtype) in schema.items():
        array = named[name]
        if tuple(array.shape) != tuple(shape):
            raise PayloadError(
                f"upload from {sender}: '{name}' has shape {tuple(array.shape)}, expected {tuple(shape)}"
            )
        if array.dtype.name not in WIRE_FLOATS.get(dtype, (dtype,)):
            raise PayloadError(f"upload from {sender}: '{name}' has dtype {array.dtype.name}, expected {dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise PayloadError(f"upload from {sender}: '{name}' holds NaN or Inf values")


def validate_max_abs(named: Mapping[str, np.ndarray], prefix: str, limit: float, sender: str, key: str) -> None:
    """Refuse an upload whose floating-point entries under ``prefix`` hold a value beyond +-``limit`` (config key
    ``key``; 0 = no limit)."""
    if not limit:
        return
    for name, array in named.items():
        if name.startswith(prefix) and array.dtype.kind == "f" and array.size:
            largest = float(np.abs(array).max())
            if largest > limit:
                raise PayloadError(f"upload from {sender}: '{name}' holds a value of magnitude {largest:.3g}, beyond "
                                   f"{key} = {limit:g}")


def validate_row_norms(array: np.ndarray, name: str, limit: float, sender: str, why: str) -> None:
    """Refuse ``array`` when a vector along its last axis has an L2 norm above ``limit`` (``why`` names the rule)."""
    norms = np.linalg.norm(array.astype(np.float64), axis=-1)
    if norms.size and norms.max() > limit:
        index = tuple(int(i) for i in np.unravel_index(int(norms.argmax()), norms.shape))
        raise PayloadError(f"upload from {sender}: '{name}' row {index} has L2 norm {norms.max():.3g}, over "
                           f"{limit:.3g} ({why})")


def weights_schema(weights: Sequence[np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array of a model: what an upload of new weights must match."""
    return [(tuple(w.shape), w.dtype.name) for w in weights]


def validate_weights(
    weights: Sequence[np.ndarray], reference: Sequence[tuple[tuple[int, ...], str]], sender: str
) -> None:
    """Refuse model weights whose number of arrays, shapes, dtypes or size differ from ``reference``, or that
    hold NaN or Inf."""
    expected_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in reference)
    if len(weights) != len(reference):
        raise PayloadError(
            f"upload from {sender} has {len(weights)} arrays ({nbytes(weights)} bytes); the global model has "
            f"{len(reference)} ({expected_bytes} bytes)"
        )
    for index, (array, (shape, dtype)) in enumerate(zip(weights, reference, strict=True)):
        if tuple(array.shape) != tuple(shape):
            raise PayloadError(f"upload from {sender}: array {index} has shape {tuple(array.shape)}, expected {shape}")
        if array.dtype.name != dtype:
            raise PayloadError(f"upload from {sender}: array {index} has dtype {array.dtype.name}, expected {dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise PayloadError(f"upload from {sender}: array {index} holds NaN or Inf values")


def validate_num_examples(num_examples: object, maximum: int, sender: str) -> None:
    """Refuse an example count that is not an integer in [1, ``maximum``] (it weights the average)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or not (
        1 <= num_examples <= maximum
    ):
        raise PayloadError(
            f"upload from {sender} claims {num_examples!r} training examples; accepted: 1 to {maximum} "
            "(train.max-client-examples)"
        )


_CLIENT_NAME = re.compile(r"[\w .+-]{1,64}")
_FRACTIONS = ("global_acc", "personal_acc")


def validate_evaluation(metrics: Mapping[str, object], num_examples: object, maximum: int, sender: str) -> str:
    """Refuse an evaluation report whose client name, accuracies (in [0, 1]), loss (finite, >= 0) or example
    count is malformed; return the client name it reports."""
    name = metrics.get(protocol.CLIENT_NAME)
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name):
        raise PayloadError(f"evaluation from {sender} names its client {str(name)[:80]!r}; expected 1-64 letters, "
                           "digits, spaces or '_.+-'")
    validate_num_examples(num_examples, maximum, sender)
    for key in (*_FRACTIONS, "global_loss"):
        if key not in metrics:
            continue
        value = metrics[key]
        upper = 1.0 if key in _FRACTIONS else math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= upper:
            raise PayloadError(f"evaluation from {name} reports {key} = {str(value)[:80]!r}; expected a number in "
                               f"[0, {upper:g}]")
    if "global_acc" in metrics and "global_loss" not in metrics:
        raise PayloadError(f"evaluation from {name} reports global_acc without global_loss")
    return name


def nbytes(arrays: Sequence[np.ndarray]) -> int:
    """Bytes of a list of arrays, as counted for communication."""
    return int(sum(a.nbytes for a in arrays))


def split_prefix(named: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in named.items() if k.startswith(prefix)}


def with_prefix(named: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Entries with ``prefix`` prepended to each name."""
    return {prefix + k: v for k, v in named.items()}


def weights_to_named(weights: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Model weights as ordered named entries ``00000``, ``00001``, ..."""
    return {f"{i:05d}": w for i, w in enumerate(weights)}


def named_to_weights(named: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Inverse of :func:`weights_to_named`."""
    return [named[k] for k in sorted(named)]
