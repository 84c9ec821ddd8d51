"""Named-tensor codec and upload validation."""

import numpy as np
import pytest

from warmfed_flwr.errors import ConfigError, PayloadError
from warmfed_flwr.wire import payload

SCHEMA = {"adapter.a": ((4, 2), "float32"), "embeddings": ((10, 8, 32), "float32")}


def _upload():
    rng = np.random.default_rng(0)
    return {"adapter.a": rng.standard_normal((4, 2)).astype(np.float32),
            "embeddings": rng.standard_normal((10, 8, 32)).astype(np.float32)}


def test_round_trip_is_exact_and_keeps_names_and_dtypes():
    named = {**_upload(), "labels": np.arange(5, dtype=np.int64), "images": np.zeros((2, 3, 4, 4), np.uint8)}
    decoded = payload.decode(payload.encode(named))
    assert list(decoded) == list(named)
    for key in named:
        assert decoded[key].dtype == named[key].dtype
        np.testing.assert_array_equal(decoded[key], named[key])


def test_empty_bundle_round_trips():
    assert payload.decode(payload.encode({})) == {}


def test_bfloat16_like_dtypes_are_refused_at_encode():
    with pytest.raises(PayloadError, match="float64"):
        payload.encode({"x": np.zeros(2, np.float64)})


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (lambda a: a[1:], "no manifest"),
        (lambda a: [np.frombuffer(b"{not json", np.uint8), *a[1:]], "unreadable manifest"),
        (lambda a: a[:-1], "lists 2 entries but carries 1"),
        (lambda a: [a[0], a[1].reshape(2, 4), a[2]], "manifest says"),
        (lambda a: [a[0], a[1].astype(np.float16), a[2]], "manifest says"),
    ],
)
def test_tampered_bundles_are_refused(tamper, needle):
    arrays = payload.encode(_upload())
    with pytest.raises(PayloadError, match=needle):
        payload.decode(tamper(arrays), sender="client-7")


def test_valid_upload_passes_validation():
    payload.validate(_upload(), SCHEMA, "c0", max_bytes=10**6)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda u: u.pop("adapter.a"), "lacks"),
        (lambda u: u.update(extra=np.zeros(1, np.float32)), "unexpected"),
        (lambda u: u.update({"adapter.a": np.zeros((2, 4), np.float32)}), "shape"),
        (lambda u: u.update({"embeddings": np.zeros((10, 8, 31), np.float32)}), "shape"),
        (lambda u: u.update({"adapter.a": np.zeros((4, 2), np.int32)}), "dtype"),
        (lambda u: u["adapter.a"].__setitem__((0, 0), np.nan), "NaN or Inf"),
        (lambda u: u["embeddings"].__setitem__((0, 0, 0), np.inf), "NaN or Inf"),
    ],
)
def test_malformed_uploads_are_refused_naming_the_client(mutate, needle):
    upload = _upload()
    mutate(upload)
    with pytest.raises(PayloadError, match=needle) as info:
        payload.validate(upload, SCHEMA, "client-3", max_bytes=10**6)
    assert "client-3" in str(info.value)


def test_oversize_upload_is_refused():
    with pytest.raises(PayloadError, match="over the limit"):
        payload.validate(_upload(), SCHEMA, "c0", max_bytes=100)


def test_weights_keep_their_order_through_names():
    weights = [np.full(i + 1, i, np.float32) for i in range(12)]
    named = payload.with_prefix(payload.weights_to_named(weights), "m.")
    back = payload.named_to_weights(payload.split_prefix(named, "m."))
    assert [w.tolist() for w in back] == [w.tolist() for w in weights]


def test_zero_dimensional_arrays_keep_their_shape():
    named = {"num_batches_tracked": np.array(7, dtype=np.int64)}
    decoded = payload.decode(payload.encode(named))
    assert decoded["num_batches_tracked"].shape == ()
    assert int(decoded["num_batches_tracked"]) == 7


def test_fp16_travels_for_fp32_entries_and_casts_back():
    half = payload.cast_floats(_upload(), "float16")
    payload.validate(half, SCHEMA, "c0", max_bytes=10**6)
    restored = payload.cast_floats(half, "float32")
    assert all(restored[name].dtype.name == dtype for name, (_, dtype) in SCHEMA.items())


def test_round_zero_limit_is_the_schema_size_under_the_hard_cap():
    sd15_adapter = {f"adapter.unet.{i}.lora_A.weight": ((8, 2_000), "float32") for i in range(344)}
    size = payload.schema_bytes(sd15_adapter)
    assert size > 16 * 2**20
    limit = payload.upload_limit(sd15_adapter, hard_cap_bytes=256 * 2**20)
    assert size <= limit <= size * (1 + payload.UPLOAD_MARGIN)
    with pytest.raises(ConfigError, match="synthesis.max-upload-mb"):
        payload.upload_limit(sd15_adapter, hard_cap_bytes=16 * 2**20)
