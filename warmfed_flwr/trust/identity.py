"""train.identity-file: which Flower node may use which client name.

Client names are self-declared in every reply. Under the deployment engine with SuperNode authentication
(``flower-superlink --enable-supernode-auth``) a node id is bound to the public key registered with
``flwr supernode register``, and every Fleet API request is signed with its private key, so the node id a reply
comes from is authenticated. The identity file binds each client name to one such node id.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from warmfed_flwr.config.loading import absolute_path
from warmfed_flwr.errors import ConfigError

KEY = "train.identity-file"

Identities = dict[str, str]
"""Client name -> node id (as a decimal string, the ClientProxy's cid)."""


def _node_id(name: str, value: object, path: Path) -> str:
    """``value`` as a node id string; refused unless it is a positive integer."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not text.isdigit() or int(text) == 0:
        raise ConfigError(f"{KEY} {path}: client '{name}' maps to {value!r}, not a node id (a positive integer as "
                          "`flwr supernode register` or `flwr supernode list` prints it)")
    return str(int(text))


def load_identities(value: str) -> Identities:
    """The mapping in the file ``value`` names; empty when ``value`` is "" (no identity check)."""
    if not value:
        return {}
    path = absolute_path(KEY, value)
    try:
        mapping = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{KEY} = '{path}' is not a readable YAML or JSON file: {exc}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"{KEY} = '{path}' must hold a non-empty mapping of client name -> node id")
    identities = {str(name): _node_id(str(name), node, path) for name, node in mapping.items()}
    owners: dict[str, str] = {}
    for name, node in identities.items():
        if node in owners:
            raise ConfigError(f"{KEY} = '{path}' binds node {node} to both '{owners[node]}' and '{name}'; one node "
                              "is one client")
        owners[node] = name
    return identities


def claim_refusal(identities: Identities, name: str, node: str) -> str | None:
    """Why node ``node`` may not use client name ``name``; None when it may (always, without an identity file)."""
    if not identities:
        return None
    bound = identities.get(name)
    if bound is None:
        return f"node {node} claims client '{name}', which {KEY} does not list"
    if bound != node:
        return f"node {node} claims client '{name}', which {KEY} binds to node {bound}"
    return None
