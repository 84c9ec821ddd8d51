"""The Flower ClientApp: read the config and node config, build the algorithm's NumPyClient."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp

from clients.base import RESUMABLE_STATE, FederatedClient, LocalOnlyClient
from clients.state import ClientStateStore, PersistentStateClient, client_state_dir
from warmfed_flwr.config.loading import resolve
from warmfed_flwr.data import load_client
from warmfed_flwr.errors import ConfigError
from warmfed_flwr.learning.training import resolve_device, seed_everything
from warmfed_flwr.runtime import cache_dir, one_line_errors, run_dir
from warmfed_flwr.trust import dp


def client_class(algorithm: str) -> type[FederatedClient]:
    """The NumPyClient of ``algorithm``; the generative stack is imported only by the algorithms that use it."""
    if algorithm in ("warmfed", "fgl"):
        from clients.warmfed import WarmFedClient

        return WarmFedClient
    return LocalOnlyClient if algorithm == "local" else FederatedClient


@one_line_errors
def client_fn(context: Context) -> Client:
    """Build this node's client from its partition-id, loading only that partition (cached on disk).

    A named run (``run-name``: one that can be resumed) keeps the client's state snapshots under its run directory.
    """
    cfg = resolve(dict(context.run_config))
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", cfg.data.num_clients))
    if num_partitions != cfg.data.num_clients or not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node has partition-id {partition_id} of {num_partitions} partitions but 'data.num-clients' = "
            f"{cfg.data.num_clients}; start as many SuperNodes (num-supernodes) as data.num-clients"
        )
    seed_everything(cfg.seed * 1000 + partition_id)
    class_names, split = load_client(cfg.data, cfg.seed, cache_dir(cfg), partition_id)
    cfg = dp.with_privacy_budget(cfg, len(class_names))
    device = resolve_device(cfg.device)
    client = client_class(cfg.algorithm)(cfg, class_names, split, partition_id, context, device, cache_dir(cfg))
    if not cfg.run_name:
        return client.to_client()
    store = ClientStateStore(client_state_dir(run_dir(cfg), split.name))
    return PersistentStateClient(client.to_client(), context, store, RESUMABLE_STATE)


app = ClientApp(client_fn=client_fn)
