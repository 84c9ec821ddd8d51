"""Experiment configuration: YAML under conf/, Flower run-config overrides, typed validation."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from warmfed_flwr.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
UNSET = ""
"""The pyproject default of every override key: "take the experiment YAML's value"."""

Algorithm = Literal["fedavg", "fedprox", "local", "centralized", "fgl", "warmfed"]
Personalization = Literal["none", "dsd", "pfedsd", "ditto", "fedbn"]
Fault = Literal["none", "raise", "hang", "exit", "nan", "wrong-shape", "extra-key", "oversize", "absurd-examples"]


@dataclass(frozen=True)
class DataConfig:
    """Where client data comes from and how it is split."""

    source: Literal["digits", "imagefolder", "hub", "camelyon17", "domainnet"] = "digits"
    path: str = ""
    hub_id: str = ""
    hub_config: str = ""
    hub_image_column: str = "image"
    hub_label_column: str = "label"
    hub_domain_column: str = ""
    domains: str = "mnist,digits,fonts,mnistm"
    partition: Literal["domain", "dirichlet"] = "domain"
    num_clients: int = 4
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.2
    image_size: int = 32
    max_per_domain: int = 0
    on_corrupt: Literal["error", "skip"] = "error"
    classes: str = ""

    def domain_list(self) -> list[str]:
        """The configured domain names, in order."""
        return [d.strip() for d in self.domains.split(",") if d.strip()]

    def class_list(self) -> list[str]:
        """The configured class folder names (empty: every class)."""
        return [c.strip() for c in self.classes.split(",") if c.strip()]


@dataclass(frozen=True)
class ModelConfig:
    """The classifier trained by every algorithm."""

    name: Literal["cnn", "resnet18"] = "cnn"
    small_stem: bool = True
    pretrained_path: str = ""
    normalize: Literal["none", "imagenet"] = "none"


@dataclass(frozen=True)
class TrainConfig:
    """Classifier optimisation, federation sampling and client-side training."""

    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    proximal_mu: float = 0.01
    centralized_epochs: int = 5
    round_timeout: float = 3600.0
    max_client_examples: int = 1_000_000
    augment: Literal["none", "flip-crop"] = "none"


@dataclass(frozen=True)
class GeneratorConfig:
    """The text-to-image generator: 'tiny' (the embedded foundation), a hub id or a local path."""

    base: str = "tiny"
    prompt_template: str = "a photo of a {label}"
    domain_prompts: bool = True
    foundation_steps: int = 8000
    foundation_source: str = "digits"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


@dataclass(frozen=True)
class LoraConfig:
    """Client-side LoRA fine-tuning of the generator's UNet."""

    enabled: bool = True
    rank: int = 8
    alpha: float = 8.0
    targets: str = "to_q,to_k,to_v,to_out.0,conv1,conv2"
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32

    def target_list(self) -> list[str]:
        """The LoRA target module names."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]


@dataclass(frozen=True)
class SynthesisConfig:
    """Server-side synthesis of the labelled synthetic set."""

    images_per_class: int = 30
    steps: int = 10
    guidance: float = 3.0
    negative_prompt: str = ""
    batch_size: int = 64
    subset_ratio: float = 0.2
    max_upload_mb: float = 256.0
    upload_dtype: Literal["float32", "float16"] = "float32"
    quality_check: bool = True
    devices: str = ""

    def device_list(self) -> list[str]:
        """The server's synthesis devices ('cpu', 'cuda' or 'cuda:N'); empty: the run's device."""
        names = [part.strip() for part in self.devices.split(",") if part.strip()]
        for name in names:
            if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
                raise ConfigError(f"config key 'synthesis.devices' = {self.devices!r} lists {name!r}; use comma-"
                                  "separated cpu, cuda or cuda:N (e.g. 'cuda:0,cuda:1'), or '' for the run's device")
        return names


@dataclass(frozen=True)
class WarmFedConfig:
    """Warm-start and globalization knobs (WARMFED.md steps 4-7)."""

    warm_epochs: int = 10
    client_syn_epochs: int = 1
    server_ft_epochs: int = 1
    client_syn_finetune: bool = True
    server_finetune: bool = True
    syn_bn_stats: Literal["frozen", "update"] = "update"
    server_ft_target: Literal["labels", "ensemble"] = "labels"
    syn_lr_scale: float = 0.1
    client_syn_mode: Literal["before", "mixed"] = "before"


@dataclass(frozen=True)
class PersonalizationConfig:
    """Client-side personalization (WARMFED.md steps 8-11)."""

    method: Personalization = "none"
    epochs: int = 1
    dsd_lambda: float = 1.0
    dsd_temperature: float = 3.0
    tau_start: float = 1.0
    tau_end: float = 0.1
    selector_lr: float = 0.05
    selector_steps: int = 100
    selector_sees_label: bool = True
    ditto_lambda: float = 0.1


@dataclass(frozen=True)
class FaultConfig:
    """Test hook: inject one kind of fault into some clients in some rounds (tests, fault matrix)."""

    kind: Fault = "none"
    clients: str = ""
    rounds: str = ""
    hang_seconds: float = 120.0

    def client_ids(self) -> list[int]:
        """The partition ids that misbehave."""
        return _int_list("faults.clients", self.clients)

    def round_ids(self) -> list[int]:
        """The algorithm rounds in which they misbehave (empty: every round)."""
        return _int_list("faults.rounds", self.rounds)

    def hits(self, partition_id: int, algo_round: int) -> bool:
        """Whether client ``partition_id`` misbehaves in ``algo_round``."""
        rounds = self.round_ids()
        return self.kind != "none" and partition_id in self.client_ids() and (not rounds or algo_round in rounds)


def _int_list(key: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"config key '{key}' = {text!r} must be comma-separated integers, e.g. '0,2'") from None


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment, resolved from YAML plus run-config overrides."""

    experiment: str = "warmfed"
    algorithm: Algorithm = "warmfed"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "~/warmfed-runs"
    run_name: str = ""
    cache_dir: str = ""
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    warmfed: WarmFedConfig = field(default_factory=WarmFedConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_flat(self) -> dict[str, Any]:
        """The config as flat kebab-case keys, the shape of Flower's run config."""
        return _flatten(dataclasses.asdict(self))


_POSITIVE = {
    "data.num-clients", "data.image-size", "train.rounds", "train.batch-size",
    "train.min-fit-clients", "lora.rank", "lora.steps", "lora.batch-size",
    "synthesis.images-per-class", "synthesis.steps", "synthesis.batch-size",
    "generator.foundation-steps", "personalization.selector-steps",
}
_FRACTIONS = {"data.test-fraction", "train.fraction-fit", "synthesis.subset-ratio"}


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + _kebab(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def schema() -> dict[str, Any]:
    """Every config key (flat, kebab-case) with its default value."""
    return ExperimentConfig().to_flat()


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Coerce ``value`` to ``annotation`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' = {value!r} is not allowed; use one of {', '.join(map(str, allowed))}"
            )
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} must be true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} must be an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' = {value!r} must be a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' = {value!r} must be a string")
    raise ConfigError(f"config key '{key}' has an unsupported type {annotation}")


def _check_range(key: str, value: Any) -> None:
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"config key '{key}' = {value!r} must be a positive integer")
    if key in _FRACTIONS and not 0.0 < value <= 1.0:
        raise ConfigError(f"config key '{key}' = {value!r} must lie in (0, 1]")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"config key '{key}' = {value!r} must not be negative")


def _build(cls: type, flat: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = prefix + _kebab(f.name)
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            kwargs[f.name] = _build(annotation, flat, name + ".")
        elif name in flat:
            value = _check_type(name, flat[name], annotation)
            _check_range(name, value)
            kwargs[f.name] = value
    return cls(**kwargs)


def _cross_checks(cfg: ExperimentConfig) -> None:
    if cfg.data.source == "hub" and not cfg.data.hub_id:
        raise ConfigError("config key 'data.source' = 'hub' needs 'data.hub-id': a hub dataset id")
    if cfg.data.source not in ("digits", "hub") and not cfg.data.path:
        raise ConfigError(f"config key 'data.source' = '{cfg.data.source}' needs 'data.path': the dataset root folder")
    if cfg.data.partition == "domain" and cfg.data.source == "digits":
        domains = cfg.data.domain_list()
        if cfg.data.num_clients != len(domains):
            raise ConfigError(
                f"config key 'data.num-clients' = {cfg.data.num_clients} must equal the number of "
                f"'data.domains' ({len(domains)}) when 'data.partition' = 'domain'; use dirichlet to split further"
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
    if cfg.resume and not cfg.run_name:
        raise ConfigError("config key 'resume' = true needs 'run-name': the run directory whose checkpoint to resume")
    if cfg.resume and (cfg.algorithm == "local" or cfg.personalization.method != "none"):
        kept = "local models" if cfg.algorithm == "local" else f"'{cfg.personalization.method}' personalized state"
        raise ConfigError(f"config key 'resume' = true cannot restore the clients' {kept} (kept in client memory, "
                          "not in server checkpoints); run it again from the start")
    if cfg.resume and cfg.algorithm == "centralized":
        raise ConfigError("config key 'resume' = true is not supported for 'algorithm' = 'centralized': "
                          "its server-side model is not checkpointed; run it again from the start")
    if "{label}" not in cfg.generator.prompt_template:
        raise ConfigError(
            f"config key 'generator.prompt-template' = {cfg.generator.prompt_template!r} must contain '{{label}}'"
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
    flat = _flatten(tree)
    flat.setdefault("experiment", path.stem)
    return flat


def resolve(overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve the experiment named by ``overrides['experiment']`` and apply the set overrides.

    FGL is WarmFed's harness without client adapters or client synthetic fine-tuning: ``algorithm = fgl``
    turns ``lora.enabled`` and ``warmfed.client-syn-finetune`` off.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v != UNSET}
    known = schema()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'; every key and its default is in conf/warmfed.yaml")
    flat = load_yaml(str(overrides.get("experiment", "warmfed")))
    for key in flat:
        if key not in known:
            raise ConfigError(f"unknown config key '{key}' in experiment '{flat['experiment']}'")
    flat.update(overrides)
    cfg = _build(ExperimentConfig, flat)
    _cross_checks(cfg)
    if cfg.algorithm == "fgl":
        cfg = dataclasses.replace(
            cfg,
            lora=dataclasses.replace(cfg.lora, enabled=False),
            warmfed=dataclasses.replace(cfg.warmfed, client_syn_finetune=False),
        )
    return cfg
