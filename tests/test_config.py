"""Config: YAML + run-config overrides, validated with errors that name the key."""

from pathlib import Path

import pytest
import tomllib
import yaml

from warmfed_flwr.config import CONF_DIR, ExperimentConfig, load_yaml, resolve, schema
from warmfed_flwr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_experiment_is_warmfed_with_yaml_values():
    cfg = resolve({"experiment": "warmfed"})
    assert cfg.algorithm == "warmfed"
    assert cfg.train.rounds == 5
    assert cfg.lora.target_list() == ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def test_warmfed_yaml_spells_out_every_default():
    flat = load_yaml("warmfed")
    assert set(flat) == set(schema())
    defaults = ExperimentConfig().to_flat()
    for key, value in flat.items():
        assert value == defaults[key], key


def test_pyproject_declares_every_key_as_an_override():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(config) == set(schema())
    assert all(v == "" for k, v in config.items() if k != "experiment")


def test_every_experiment_yaml_resolves():
    names = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    assert {"warmfed", "fgl", "fedavg", "fedprox", "local", "centralized"} <= set(names)
    for name in names:
        assert resolve({"experiment": name}).experiment == name


def test_overrides_apply_key_by_key_and_empty_means_unset():
    cfg = resolve({"experiment": "warmfed", "algorithm": "fedavg", "train.rounds": 3, "lora.rank": ""})
    assert (cfg.algorithm, cfg.train.rounds, cfg.lora.rank) == ("fedavg", 3, 8)


def test_int_is_accepted_for_float_keys():
    assert resolve({"train.lr": 1}).train.lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"train.roundz": 3}, ["train.roundz"]),
        ({"train.rounds": "five"}, ["train.rounds", "five", "integer"]),
        ({"algorithm": "fedsgd"}, ["algorithm", "fedsgd", "warmfed"]),
        ({"train.rounds": 0}, ["train.rounds", "positive"]),
        ({"synthesis.subset-ratio": 1.5}, ["synthesis.subset-ratio", "(0, 1]"]),
        ({"lora.enabled": "yes"}, ["lora.enabled", "true or false"]),
        ({"train.lr": -0.1}, ["train.lr", "negative"]),
        ({"data.num-clients": 3}, ["data.num-clients", "data.domains"]),
        ({"generator.prompt-template": "a photo"}, ["generator.prompt-template", "{label}"]),
        ({"experiment": "nope"}, ["experiment", "nope", "warmfed"]),
        ({"algorithm": "local", "personalization.method": "dsd"}, ["personalization.method"]),
        ({"warmfed.syn-bn-stats": "thawed"}, ["warmfed.syn-bn-stats", "thawed", "frozen", "update"]),
        ({"warmfed.client-syn-mode": "after"}, ["warmfed.client-syn-mode", "after", "before", "mixed"]),
        ({"warmfed.syn-lr-scale": -0.5}, ["warmfed.syn-lr-scale", "negative"]),
        ({"generator.domain-prompts": "yes"}, ["generator.domain-prompts", "true or false"]),
        ({"synthesis.quality-check": 1}, ["synthesis.quality-check", "true or false"]),
    ],
)
def test_bad_values_name_the_key_in_one_line(overrides, names):
    with pytest.raises(ConfigError) as info:
        resolve(overrides)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_bad_key_inside_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochz": 2}}))
    with pytest.raises(ConfigError, match="train.epochz"):
        resolve({"experiment": str(path)})


def test_fgl_turns_adapters_and_client_synthetic_finetuning_off():
    cfg = resolve({"algorithm": "fgl"})
    assert not cfg.lora.enabled and not cfg.warmfed.client_syn_finetune
    assert cfg.warmfed.server_finetune


def test_synthetic_finetuning_overrides_reach_the_config():
    w = resolve({"warmfed.syn-bn-stats": "frozen", "warmfed.syn-lr-scale": 0.3, "warmfed.client-syn-mode": "mixed",
                 "warmfed.server-ft-target": "ensemble"}).warmfed
    assert (w.syn_bn_stats, w.syn_lr_scale, w.client_syn_mode, w.server_ft_target) == ("frozen", 0.3, "mixed",
                                                                                          "ensemble")
