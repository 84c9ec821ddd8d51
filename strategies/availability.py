"""How long a round waits for its clients to connect: at most train.round-timeout, then on with those connected.

Flower's ClientManager.sample waits for ``min_available_clients`` for a day by default, before any round timeout
applies, so one vanished SuperNode would stall the run. The strategies wait here instead and sample without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.server import ClientManager
from flwr.server.client_proxy import ClientProxy

from warmfed_flwr.errors import FederationError


@dataclass
class ClientWait:
    """Waits up to ``timeout`` seconds (None: without limit) for ``expected`` connected clients, at first ``total``.

    A round that went on without some clients lowers ``expected`` to those connected, so later rounds do not wait
    again for clients already written off; clients that come back are sampled as soon as they connect, and
    ``expected`` rises with them (up to ``total``).
    """

    total: int
    needed: int
    timeout: float | None
    expected: int = field(init=False)

    def __post_init__(self) -> None:
        self.expected = self.total

    def wait(self, client_manager: ClientManager) -> int:
        """How many clients are connected once ``expected`` are or the timeout has run out."""
        if client_manager.num_available() < self.expected:
            client_manager.wait_for(self.expected, timeout=self.timeout)  # type: ignore[arg-type]
        return client_manager.num_available()

    def settle(self, available: int, round_label: str) -> None:
        """Wait for ``available`` clients from now on; raise :class:`FederationError` when that is fewer than
        ``needed``."""
        if available < self.needed:
            waited = "without limit" if self.timeout is None else f"train.round-timeout = {self.timeout:g} s"
            raise FederationError(
                f"{round_label}: {available} of {self.expected} clients connected after waiting {waited}, fewer than "
                f"train.min-fit-clients = {self.needed}; restart the missing SuperNodes or lower train.min-fit-clients"
            )
        self.expected = min(available, self.total)


def missing_clients(available: dict[str, ClientProxy], names: dict[str, str], bound: dict[str, str]) -> list[str]:
    """Names of the clients not connected now: those seen before (``names``: cid -> name) and those an identity
    file binds to a node id (``bound``: name -> cid), less any name a connected client uses."""
    present = {names[cid] for cid in available if cid in names}
    seen = [name for cid, name in names.items() if cid not in available]
    listed = [name for name, cid in bound.items() if cid not in available]
    return [name for name in dict.fromkeys(seen + listed) if name not in present]
