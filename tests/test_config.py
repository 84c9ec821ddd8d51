"""Config: YAML + run-config overrides, validated with errors that name the key."""

import pytest
import yaml

from warmfed_flwr.config import keys
from warmfed_flwr.config.loading import (
    CONF_DIR,
    FGL_DIFFERENCES,
    bounds,
    key_is_used,
    load_yaml,
    resolve,
    schema,
    schema_fields,
)
from warmfed_flwr.errors import ConfigError


def test_default_experiment_is_warmfed_with_yaml_values():
    cfg = resolve({"experiment": "warmfed"})
    assert cfg.algorithm == "warmfed"
    assert cfg.train.rounds == 5
    assert cfg.lora.target_list() == ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def test_conf_yamls_state_only_what_differs_from_the_defaults():
    defaults = schema()
    for path in CONF_DIR.glob("*.yaml"):
        flat = load_yaml(str(path))
        assert {k for k, v in flat.items() if k != "experiment" and v == defaults[k]} == set(), path.name
    assert load_yaml("warmfed") == {"experiment": "warmfed"}


def test_pyproject_and_docs_are_in_step_with_the_schema():
    text = keys.PYPROJECT.read_text()
    assert keys.check(text, keys.DOC.read_text()) == []
    assert keys.main(["--check"]) == 0
    assert keys.rewrite_pyproject(text) == text


def test_key_check_reports_a_missing_and_an_extra_pyproject_key():
    text = keys.PYPROJECT.read_text()
    assert '"lora.rank" = ""\n' in text
    broken = text.replace('"lora.rank" = ""\n', '"lora.ranks" = ""\n')
    problems = keys.pyproject_problems(broken)
    assert len(problems) == 2
    assert "lacks 'lora.rank'" in problems[0] and "'lora.ranks', which is not a schema key" in problems[1]
    assert keys.check(broken, "stale") == [*problems, "docs/config.md is not the schema's current rendering"]
    assert keys.rewrite_pyproject(broken) == text


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
    with pytest.raises(ConfigError) as info:
        resolve({"experiment": str(path)})
    assert str(info.value) == ("unknown config key 'train.epochz' in experiment 'mine'; every key, its default "
                               "and range is in docs/config.md")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.rounds": 0}, "config key 'train.rounds' = 0 must be a positive integer"),
        ({"data.dirichlet-alpha": 0.0}, "config key 'data.dirichlet-alpha' = 0.0 must be positive"),
        ({"data.test-fraction": 0}, "config key 'data.test-fraction' = 0 must lie in (0, 1]"),
        ({"seed": -1}, "config key 'seed' = -1 must not be negative"),
        ({"train.rounds": 2.0}, "config key 'train.rounds' = 2.0 must be an integer"),
        ({"model.name": "vit"}, "config key 'model.name' = 'vit' is not allowed; use one of cnn, resnet18"),
        ({"lora.rankz": 4}, "unknown config key 'lora.rankz'; every key, its default and range is in docs/config.md"),
    ],
)
def test_messages_are_exact(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve(overrides)
    assert str(info.value) == message


@pytest.mark.parametrize("key", [key for key, (info, _) in schema_fields().items() if bounds(info)])
def test_every_declared_range_is_enforced(key):
    found = bounds(schema_fields()[key][0])
    outside = found["gt"] if "gt" in found else found["ge"] - 1
    if isinstance(schema()[key], float):
        outside = float(outside)
    with pytest.raises(ConfigError) as info:
        resolve({key: outside})
    assert str(info.value).startswith(f"config key '{key}' = {outside!r} must ") and "\n" not in str(info.value)


def test_fgl_turns_adapters_and_client_synthetic_finetuning_off():
    cfg = resolve({"algorithm": "fgl"})
    assert not cfg.lora.enabled and not cfg.warmfed.client_syn_finetune
    assert cfg.warmfed.server_finetune


def test_fgl_differs_from_warmfed_only_by_its_declared_differences():
    fgl, warmfed = resolve({"algorithm": "fgl"}).to_flat(), resolve({"algorithm": "warmfed"}).to_flat()
    assert {k for k in fgl if fgl[k] != warmfed[k]} == {"algorithm", *FGL_DIFFERENCES}
    assert all(fgl[k] == v for k, v in FGL_DIFFERENCES.items())


def test_key_is_used_follows_the_algorithm_and_personalization():
    warmfed = resolve({"algorithm": "warmfed"})
    unused = {key for key in schema() if not key_is_used(warmfed, key)}
    assert unused == {"train.proximal-mu", "train.centralized-epochs"} | {
        key for key in schema() if key.startswith("personalization.") and key != "personalization.method"}
    fedavg = resolve({"algorithm": "fedavg", "personalization.method": "dsd"})
    assert not key_is_used(fedavg, "lora.rank") and not key_is_used(fedavg, "warmfed.warm-epochs")
    assert key_is_used(fedavg, "personalization.dsd-lambda") and key_is_used(fedavg, "train.lr")
    assert key_is_used(resolve({"algorithm": "fgl"}), "synthesis.steps")
    assert key_is_used(resolve({"algorithm": "fedprox"}), "train.proximal-mu")
    assert key_is_used(resolve({"algorithm": "centralized"}), "train.centralized-epochs")
    with pytest.raises(ConfigError, match="train.nope"):
        key_is_used(warmfed, "train.nope")


def test_synthetic_finetuning_overrides_reach_the_config():
    w = resolve({"warmfed.syn-bn-stats": "frozen", "warmfed.syn-lr-scale": 0.3, "warmfed.client-syn-mode": "mixed",
                 "warmfed.server-ft-target": "ensemble"}).warmfed
    assert (w.syn_bn_stats, w.syn_lr_scale, w.client_syn_mode, w.server_ft_target) == ("frozen", 0.3, "mixed",
                                                                                          "ensemble")
