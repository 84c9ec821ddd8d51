"""Experiment configuration: YAML under conf/ and Flower run-config overrides, validated against the schema.

Every key, its default, range and meaning lives in ``warmfed_flwr/config/schema.py`` (rendered to docs/config.md);
this module resolves an experiment into an ``ExperimentConfig`` and reports a bad key in one line.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from warmfed_flwr.config.schema import (
    ExperimentConfig,
    Section,
    flatten,
    kebab,
)
from warmfed_flwr.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
KEYS_DOC = "docs/config.md"
"""Where every key, its default, range and meaning is listed (written by ``python -m warmfed_flwr.config.keys``)."""
UNSET = ""
"""The pyproject default of every override key: "take the experiment YAML's value"."""

FGL_DIFFERENCES: dict[str, Any] = {"lora.enabled": False, "warmfed.client-syn-finetune": False}
"""Everything that makes FGL differ from WarmFed in this harness, besides its name: prompt embeddings without
client adapters, and no client fine-tuning on the synthetic subset. ``resolve`` applies it when algorithm = fgl."""

_TYPE_PHRASES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def schema() -> dict[str, Any]:
    """Every config key (flat, kebab-case) with its default value."""
    return ExperimentConfig().to_flat()


def schema_fields() -> dict[str, tuple[FieldInfo, type[Section]]]:
    """Every flat key, in declaration order, with its field and the section model that declares it."""
    found: dict[str, tuple[FieldInfo, type[Section]]] = {}
    for name, info in ExperimentConfig.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, Section):
            for sub, sub_info in section.model_fields.items():
                found[f"{kebab(name)}.{kebab(sub)}"] = (sub_info, section)
        else:
            found[kebab(name)] = (info, ExperimentConfig)
    return found


def usage_conditions(key: str) -> dict[str, list[str]]:
    """The flat keys and values under which the run reads ``key`` (its field's ``used_when``, else its section's)."""
    info, section = schema_fields()[key]
    for extra in (info.json_schema_extra, section.model_config.get("json_schema_extra")):
        if isinstance(extra, dict) and "used_when" in extra:
            return dict(extra["used_when"])
    return {}


def bounds(info: FieldInfo) -> dict[str, float]:
    """The field's declared range as {'gt' | 'ge' | 'lt' | 'le': bound}."""
    found: dict[str, float] = {}
    for constraint in info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(constraint, name, None) is not None:
                found[name] = getattr(constraint, name)
    return found


def interval(found: dict[str, float]) -> str:
    """A range in interval notation, e.g. '(0, 1]' or '[0, inf)'."""
    low = f"({found['gt']:g}" if "gt" in found else f"[{found['ge']:g}" if "ge" in found else "(-inf"
    high = f"{found['lt']:g})" if "lt" in found else f"{found['le']:g}]" if "le" in found else "inf)"
    return f"{low}, {high}"


def absolute_path(key: str, value: str) -> Path:
    """``value`` as an absolute path (``~`` expanded); a relative path is refused, naming ``key``."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(
            f"config key '{key}' = '{value}' must be an absolute path (or start with ~): Flower runs the app "
            "from its own install directory"
        )
    return path


def key_is_used(cfg: ExperimentConfig, key: str) -> bool:
    """Whether ``cfg``'s algorithm and personalization actually read flat ``key`` (its schema's ``used_when``)."""
    flat = cfg.to_flat()
    if key not in flat:
        raise ConfigError(_unknown(key))
    return all(flat[on] in values for on, values in usage_conditions(key).items())


def _unknown(key: str, where: str = "") -> str:
    return f"unknown config key '{key}'{where}; every key, its default and range is in {KEYS_DOC}"


def _range_phrase(info: FieldInfo) -> str:
    found = bounds(info)
    if found == {"ge": 0}:
        return "must not be negative"
    if found == {"gt": 0}:
        return "must be a positive integer" if info.annotation is int else "must be positive"
    return f"must lie in {interval(found)}"


def _one_line(error: ErrorDetails) -> str:
    """A pydantic validation error as the one-line message that names the flat key."""
    key = ".".join(kebab(str(part)) for part in error["loc"])
    value, kind = error["input"], error["type"]
    fields = schema_fields()
    if kind == "extra_forbidden" or key not in fields:
        return _unknown(key)
    info = fields[key][0]
    if kind == "literal_error":
        allowed = ", ".join(map(str, typing.get_args(info.annotation)))
        return f"config key '{key}' = {value!r} is not allowed; use one of {allowed}"
    if kind in _TYPE_PHRASES:
        return f"config key '{key}' = {value!r} {_TYPE_PHRASES[kind]}"
    if kind in _RANGE_ERRORS:
        return f"config key '{key}' = {value!r} {_range_phrase(info)}"
    return f"config key '{key}' = {value!r} is invalid: {error['msg']}".replace("\n", " ")


def build(flat: dict[str, Any]) -> ExperimentConfig:
    """Validate flat ``section.key`` values (absent keys take their defaults) into an ``ExperimentConfig``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        target = tree.setdefault(section.replace("-", "_"), {}) if section else tree
        target[name.replace("-", "_")] = value
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc.errors()[0])) from None


def _cross_checks(cfg: ExperimentConfig) -> None:
    if cfg.data.source == "hub" and not cfg.data.hub_id:
        raise ConfigError("config key 'data.source' = 'hub' needs 'data.hub-id': a hub dataset id")
    if cfg.data.source not in ("digits", "hub") and not cfg.data.path:
        raise ConfigError(f"config key 'data.source' = '{cfg.data.source}' needs 'data.path': the dataset root folder")
    per_domain = cfg.data.clients_per_domain
    if cfg.data.partition == "domain" and cfg.data.source == "digits":
        domains = cfg.data.domain_list()
        if cfg.data.num_clients != len(domains) * per_domain:
            raise ConfigError(
                f"config key 'data.num-clients' = {cfg.data.num_clients} must equal the number of 'data.domains' "
                f"({len(domains)}) x 'data.clients-per-domain' ({per_domain}) = {len(domains) * per_domain} when "
                "'data.partition' = 'domain'"
            )
    if cfg.data.partition == "dirichlet" and per_domain > 1:
        raise ConfigError(
            f"config key 'data.clients-per-domain' = {per_domain} needs 'data.partition' = 'domain'; with "
            "'dirichlet' set it to 1 and choose the clients with 'data.num-clients'"
        )
    if cfg.train.min_fit_clients > cfg.data.num_clients:
        raise ConfigError(
            f"config key 'train.min-fit-clients' = {cfg.train.min_fit_clients} exceeds "
            f"'data.num-clients' = {cfg.data.num_clients}; lower it"
        )
    if cfg.algorithm in ("local", "centralized") and cfg.personalization.method != "none":
        raise ConfigError(
            f"config key 'personalization.method' = '{cfg.personalization.method}' needs a federated algorithm; "
            f"'algorithm' = '{cfg.algorithm}' takes 'none'"
        )
    if cfg.faults.kind != "none" and not cfg.faults.client_ids():
        raise ConfigError(
            f"config key 'faults.clients' is empty but 'faults.kind' = '{cfg.faults.kind}'; name the partition ids"
        )
    cfg.faults.round_ids()
    cfg.synthesis.device_list()
    cfg.generator.domain_phrase_map()
    if cfg.resume and not cfg.run_name:
        raise ConfigError("config key 'resume' = true needs 'run-name': the run directory whose checkpoint to resume")
    if cfg.resume and cfg.algorithm == "centralized":
        raise ConfigError("config key 'resume' = true is not supported for 'algorithm' = 'centralized': "
                          "its server-side model is not checkpointed; run it again from the start")
    _check_trimming(cfg)
    if cfg.privacy.target_epsilon and cfg.privacy.noise_multiplier:
        raise ConfigError(
            f"config key 'privacy.target-epsilon' = {cfg.privacy.target_epsilon:g} sets the noise multiplier itself; "
            f"set 'privacy.noise-multiplier' (= {cfg.privacy.noise_multiplier:g}) to 0, or the target to 0"
        )
    if "{label}" not in cfg.generator.prompt_template:
        raise ConfigError(
            f"config key 'generator.prompt-template' = {cfg.generator.prompt_template!r} must contain '{{label}}'"
        )


def _check_trimming(cfg: ExperimentConfig) -> None:
    """Refuse a trimmed mean that would cut no client from the rounds Flower samples (a plain mean in disguise)."""
    train = cfg.train
    if train.aggregation != "trimmed-mean":
        return
    sampled = max(int(cfg.data.num_clients * train.fraction_fit), train.min_fit_clients)
    if int(train.trim_fraction * sampled) == 0:
        fix = (f"raise it to at least {math.ceil(100 / sampled) / 100:g}" if sampled >= 3
               else "trimmed-mean needs at least 3 clients per round")
        raise ConfigError(
            f"config key 'train.trim-fraction' = {train.trim_fraction:g} cuts no client from rounds of {sampled} "
            f"(int({train.trim_fraction:g} x {sampled}) = 0 per side); {fix}"
        )


def load_yaml(name_or_path: str) -> dict[str, Any]:
    """Read an experiment YAML (a name under conf/ or a path) into flat keys."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
        raise ConfigError(f"config key 'experiment' = '{name_or_path}': no file {path}; known experiments: {known}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment file {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"experiment file {path} must hold a mapping of config keys")
    flat = flatten(tree)
    flat.setdefault("experiment", path.stem)
    return flat


def resolve(overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve the experiment named by ``overrides['experiment']`` and apply the set overrides.

    ``algorithm = fgl`` then applies ``FGL_DIFFERENCES``.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v != UNSET}
    known = schema_fields()
    for key in overrides:
        if key not in known:
            raise ConfigError(_unknown(key))
    flat = load_yaml(str(overrides.get("experiment", "warmfed")))
    for key in flat:
        if key not in known:
            raise ConfigError(_unknown(key, f" in experiment '{flat['experiment']}'"))
    flat.update(overrides)
    cfg = build(flat)
    _cross_checks(cfg)
    if cfg.algorithm == "fgl":
        cfg = build({**cfg.to_flat(), **FGL_DIFFERENCES})
    return cfg
