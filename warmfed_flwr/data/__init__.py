"""Client datasets: the offline digits benchmark, local ImageFolder trees and hub datasets, partitioned into clients.

``load_client`` returns one Flower partition's ``ClientSplit`` (one domain or, with data.clients-per-domain
above 1, one share of a domain; or a Dirichlet label-skewed share of all domains pooled), built once per (data
config, seed) into ``<cache>/clients`` and memory-mapped from there on every later call, so a client process holds
only its own partition; ``load_clients`` gives the server every partition the same way. ``load_benchmark`` loads
and splits everything at once (the reference the partition cache must equal). Client images stay uint8 [N,S,S,3]
in memory and are yielded per item as float32 [3,S,S] in [0,1] with int64 labels. ``load_public_pool`` returns the
public data that pretrains the generator (float32 [N,3,S,S] in [0,1]).
"""

from warmfed_flwr.data.client_cache import load_client, load_clients
from warmfed_flwr.data.datasets import Benchmark, ClientSplit, ImageArrayDataset, ImageFileDataset, as_tensor_dataset
from warmfed_flwr.data.loading import default_cache_dir, load_benchmark, load_public_pool

__all__ = [
    "Benchmark",
    "ClientSplit",
    "ImageArrayDataset",
    "ImageFileDataset",
    "as_tensor_dataset",
    "default_cache_dir",
    "load_benchmark",
    "load_client",
    "load_clients",
    "load_public_pool",
]
