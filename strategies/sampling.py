"""Which clients a round asks: a sample drawn over client names with a generator seeded by (seed, round), so the same
command picks the same clients whatever node ids Flower gave them and whatever else drew from Python's global RNG."""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor

from flwr.common import GetPropertiesIns
from flwr.server.client_proxy import ClientProxy

from strategies.reports import one_line
from warmfed_flwr.wire import protocol

logger = logging.getLogger(__name__)

ROUND_STRIDE = 1_000_003
"""Seeds of different rounds of one run never meet those of another seed's rounds (for seeds below it)."""


def ask_client_names(available: dict[str, ClientProxy], timeout: float | None) -> dict[str, str]:
    """Each node's client name by node id, asked of every node at once (its properties); a node that does not answer
    is named 'node <id>'."""

    def ask(proxy: ClientProxy) -> str:
        try:
            res = proxy.get_properties(GetPropertiesIns({}), timeout=timeout, group_id=1)
            return str(res.properties[protocol.CLIENT_NAME])
        except Exception as exc:  # noqa: BLE001 - a silent node can still be sampled, under its node id
            logger.warning("node %s did not tell its client name: %s", proxy.cid, one_line(exc))
            return f"node {proxy.cid}"

    with ThreadPoolExecutor(max_workers=len(available)) as pool:
        return dict(zip(available, pool.map(ask, available.values()), strict=True))


def seeded_sample(names: dict[str, str], size: int, seed: int, algo_round: int) -> list[str]:
    """``size`` node ids of ``names`` (node id -> client name), drawn over the sorted client names by a generator
    seeded with ``seed`` + ROUND_STRIDE x ``algo_round``; in client-name order."""
    order = sorted(names, key=lambda cid: (names[cid], cid))
    chosen = set(random.Random(seed + ROUND_STRIDE * algo_round).sample(order, size))
    return [cid for cid in order if cid in chosen]


def sampling_names(available: dict[str, ClientProxy], size: int, timeout: float | None) -> dict[str, str]:
    """What a sample of ``size`` of ``available`` is drawn over: the nodes' client names, asked only when not all of
    them are sampled (else each node id stands for itself)."""
    return ask_client_names(available, timeout) if size < len(available) else {cid: cid for cid in available}


def sample_round(available: dict[str, ClientProxy], size: int, seed: int, algo_round: int,
                 timeout: float | None) -> list[ClientProxy]:
    """The round's ``size`` clients of ``available`` (node id -> proxy) by :func:`seeded_sample`."""
    names = sampling_names(available, size, timeout)
    return [available[cid] for cid in seeded_sample(names, size, seed, algo_round)]
