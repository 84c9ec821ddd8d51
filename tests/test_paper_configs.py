"""conf/paper/*.yaml: the paper-scale experiments resolve by name and state only keys that differ from the defaults."""

from __future__ import annotations

import pytest

from warmfed_flwr.config.loading import CONF_DIR, load_yaml, resolve
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.runtime import run_dir

PAPER = sorted(p.stem for p in (CONF_DIR / "paper").glob("*.yaml"))


def test_every_paper_dataset_has_a_file():
    assert PAPER == ["camelyon17", "domainnet10", "domainnet345", "office_caltech10", "pacs"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_file_resolves_by_name_and_validates(name):
    assert load_yaml(f"paper/{name}")["experiment"] == name
    cfg = resolve({"experiment": f"paper/{name}", "data.path": "/dummy"})
    assert (cfg.model.name, cfg.model.small_stem, cfg.model.normalize) == ("resnet18", False, "imagenet")
    assert cfg.generator.base == "stabilityai/stable-diffusion-2-1-base" and cfg.generator.domain_prompts
    s = cfg.synthesis
    assert (s.steps, s.guidance, s.negative_prompt, s.upload_dtype) == (50, 2.0, "low quality, low resolution",
                                                                        "float16")
    assert (cfg.lora.rank, cfg.device, cfg.train.rounds) == (8, "auto", 5)
    assert cfg.data.num_clients == len(cfg.data.domain_list())
    assert cfg.data.image_size == (96 if name == "camelyon17" else 224)


@pytest.mark.parametrize("name", PAPER)
def test_paper_file_states_only_keys_that_differ_from_the_defaults(name):
    defaults = ExperimentConfig().to_flat()
    flat = {k: v for k, v in load_yaml(f"paper/{name}").items() if k != "experiment"}
    assert {k for k, v in flat.items() if v == defaults[k]} == set()


def test_a_nested_experiment_runs_in_one_folder(tmp_path):
    cfg = resolve({"experiment": "paper/pacs", "data.path": "/dummy", "output-dir": str(tmp_path)})
    directory = run_dir(cfg)
    assert directory.parent == tmp_path and "-paper-pacs-warmfed-s0" in directory.name
