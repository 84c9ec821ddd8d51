"""Simulation only: replace a Ray client actor whose process died, so that the run goes on with every client.

Flower 1.41's RayBackend hands an actor back to its pool even when the actor's process has died (a client that
called ``os._exit``, crashed or was killed by the OOM killer). Ray does not restart it (``max_restarts`` is 0 and
Flower offers no setting for it), so every later message routed to that actor fails at once with
``ActorDiedError``: all clients fail in all later rounds. :func:`install` wraps ``RayBackend.process_message`` so
that the dead actor is swapped for a fresh one; the message that was in flight still fails, as it should.

The ServerApp installs it: in a simulation it runs in the same process as the simulation engine. In a deployment
(SuperNodes) RayBackend is not used and the wrapper never runs. This is the project's only patch of Flower
internals; it is applied only on the Flower minor versions it was tested on (:data:`TESTED_FLOWER`), and on any
other version the run goes on without it and says so once.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

TESTED_FLOWER = ("1.41", "1.42")
"""Flower minor versions whose RayBackend and BasicActorPool this patch was tested against (pyproject pins them)."""
_LOCK = threading.Lock()
_MARK = "_warmfed_replaces_dead_actors"


def flower_minor(version: str) -> str:
    """'1.42' for '1.42.0' (or '1.42.0rc1')."""
    return ".".join(version.split(".")[:2])


def install() -> bool:
    """Wrap Flower's RayBackend (once per process); False on an untested Flower or without Ray or the backend."""
    from flwr import __version__ as flower_version

    if flower_minor(flower_version) not in TESTED_FLOWER:
        logger.warning(
            "Flower %s is untested here (tested: %s); dead simulation actors are not replaced, so a client process "
            "that dies fails in every later round; install flwr%s", flower_version, ", ".join(TESTED_FLOWER),
            f">={TESTED_FLOWER[0]},<{_next_minor(TESTED_FLOWER[-1])}",
        )
        return False
    try:
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
        from ray.exceptions import ActorDiedError
    except ImportError:
        return False
    with _LOCK:
        if getattr(RayBackend.process_message, _MARK, False):
            return True
        original = RayBackend.process_message

        @functools.wraps(original)
        def process_message(self: Any, message: Any, context: Any) -> Any:
            try:
                return original(self, message, context)
            except ActorDiedError as exc:
                replace_dead_actor(self.pool, getattr(exc, "actor_id", None))
                raise

        setattr(process_message, _MARK, True)
        RayBackend.process_message = process_message
    return True


def _next_minor(minor: str) -> str:
    major, number = minor.split(".")
    return f"{major}.{int(number) + 1}"


def replace_dead_actor(pool: Any, actor_id: str | None) -> bool:
    """Swap the idle actor ``actor_id`` in Flower's ``BasicActorPool`` for a fresh one; False when it is not idle
    there (another worker holds it and will swap it when its own message fails)."""
    if pool is None or actor_id is None:
        return False
    with _LOCK:
        for index, actor in enumerate(pool.pool):
            if actor._actor_id.hex() == actor_id:
                pool.pool[index] = pool.create_actor_fn()
                logger.warning("client actor %s died; replaced it with a fresh actor", actor_id)
                return True
    return False
