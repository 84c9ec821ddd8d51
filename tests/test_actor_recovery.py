"""Replacing a dead Ray client actor in Flower's simulation pool (the end-to-end check is tests/test_fault_run.py)."""

import tomllib
from types import SimpleNamespace

import flwr
import pytest
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from ray.exceptions import ActorDiedError

from benchmarks.harness import ROOT
from warmfed_flwr import actor_recovery


def actor(actor_id: str) -> SimpleNamespace:
    return SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: actor_id))


def pool_of(*ids: str) -> SimpleNamespace:
    return SimpleNamespace(pool=[actor(i) for i in ids], create_actor_fn=lambda: actor("fresh"))


def ids(pool: SimpleNamespace) -> list[str]:
    return [a._actor_id.hex() for a in pool.pool]


def test_the_dead_actor_is_swapped_for_a_fresh_one():
    pool = pool_of("alive", "dead")
    assert actor_recovery.replace_dead_actor(pool, "dead")
    assert ids(pool) == ["alive", "fresh"]
    assert not actor_recovery.replace_dead_actor(pool, "dead"), "already replaced (or held by another worker)"
    assert not actor_recovery.replace_dead_actor(pool, None)


def test_install_wraps_process_message_once_and_reraises(monkeypatch):
    def original(self, message, context):
        error = ActorDiedError()
        error.actor_id = "dead"
        raise error

    monkeypatch.setattr(RayBackend, "process_message", original)
    assert actor_recovery.install() and actor_recovery.install()
    wrapped = RayBackend.process_message
    assert wrapped.__wrapped__ is original
    backend = SimpleNamespace(pool=pool_of("dead", "alive"))
    with pytest.raises(ActorDiedError):
        wrapped(backend, "message", "context")
    assert ids(backend.pool) == ["fresh", "alive"]


def test_the_installed_flower_is_a_tested_one_and_pyproject_pins_exactly_those():
    assert actor_recovery.flower_minor(flwr.__version__) in actor_recovery.TESTED_FLOWER, flwr.__version__
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    low, high = actor_recovery.TESTED_FLOWER[0], actor_recovery._next_minor(actor_recovery.TESTED_FLOWER[-1])
    assert f"flwr[simulation]>={low},<{high}" in dependencies


def test_an_untested_flower_is_not_patched_and_says_so(monkeypatch, caplog):
    def untouched(self, message, context):
        return "reply"

    monkeypatch.setattr(RayBackend, "process_message", untouched)
    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    assert not actor_recovery.install()
    assert RayBackend.process_message is untouched
    assert "Flower 1.99.0 is untested here (tested: 1.41, 1.42)" in caplog.text
