"""warmfed-plan: bytes, images and memory per stage, and the refusals it foresees, without downloading anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from warmfed_flwr.config.loading import CONF_DIR, resolve
from warmfed_flwr.config.schema import LoraConfig
from warmfed_flwr.plan.cli import UNSET_PATH, main, render
from warmfed_flwr.plan.estimate import make_plan
from warmfed_flwr.plan.generator import architecture
from warmfed_flwr.wire import payload

DOMAINNET = str(CONF_DIR / "paper" / "domainnet345.yaml")
GPU = {"num-supernodes": 6, "client-resources-num-gpus": 0.5}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: the plan downloads nothing."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("warmfed-plan tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def domainnet(**overrides):
    return resolve({"experiment": DOMAINNET, "data.path": UNSET_PATH, **overrides})


def test_committed_sd_configs_have_the_published_parameter_counts():
    sd15 = architecture("runwayml/stable-diffusion-v1-5", LoraConfig(enabled=False), activations=False)
    sd21 = architecture("stabilityai/stable-diffusion-2-1-base", LoraConfig(enabled=False), activations=False)
    assert (sd15.unet_parameters, sd15.vae_parameters, sd15.text_parameters) == (859_520_964, 83_653_863,
                                                                                 123_060_480)
    assert (sd21.unet_parameters, sd21.text_parameters) == (865_910_724, 340_387_840)
    assert (sd15.image_size, sd15.tokens, sd15.text_dim, sd21.text_dim) == (512, 77, 768, 1024)


def test_domainnet345_round_zero_upload_under_the_gpu_preset(capsys):
    plan = make_plan(domainnet(), GPU)
    adapter = payload.schema_bytes(plan.arch.adapter)
    assert 20 * 2**20 < adapter < 22 * 2**20
    assert plan.data.classes == 345
    embeddings = 345 * 77 * 1024
    assert plan.upload_schema_bytes == 4 * embeddings + adapter
    assert plan.upload_bytes == 2 * embeddings + adapter // 2
    assert plan.stages[0][:2] == ("round 0 upload", plan.upload_bytes)
    assert not plan.refusals
    text = render(plan)
    assert "345 prompt embeddings of 77x1024" in text and "REFUSED" not in text
    assert "no refusal foreseen" in text


def test_upload_cap_below_the_upload_is_a_refusal():
    plan = make_plan(domainnet(**{"synthesis.max-upload-mb": 50.0}), GPU)
    assert len(plan.refusals) == 1 and "synthesis.max-upload-mb" in plan.refusals[0]
    assert "REFUSED: upload limit" in render(plan)


def test_no_gpu_for_the_clients_is_a_refusal():
    plan = make_plan(domainnet(), {"num-supernodes": 6})
    assert len(plan.refusals) == 1 and "client-resources-num-gpus" in plan.refusals[0]
    assert "REFUSED: client resources" in render(plan)


def test_counts_come_from_data_path_when_it_exists(tmp_path: Path):
    for domain, per_class in (("amazon", 3), ("caltech", 2)):
        for name in ("bike", "cup"):
            folder = tmp_path / domain / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                (folder / f"{index}.jpg").write_bytes(b"")
    cfg = resolve({"experiment": str(CONF_DIR / "paper" / "office_caltech10.yaml"), "data.path": str(tmp_path),
                   "data.domains": "amazon,caltech", "data.num-clients": 2, "lora.enabled": False})
    plan = make_plan(cfg, GPU)
    assert plan.data.classes == 2 and plan.data.images == {"amazon": 6, "caltech": 4}
    assert plan.stages[0][0] == "round 0 upload" and set(plan.arch.adapter) == set()
    assert plan.upload_schema_bytes == 2 * 77 * 1024 * 4


def test_command_line_prints_the_plan_and_exits_one_on_refusal(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--config", DOMAINNET, "--run-config", "synthesis.max-upload-mb=50",
                      "--federation-config", "num-supernodes=6 client-resources-num-gpus=0.5"])
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "round 0 upload" in out and "REFUSED: upload limit" in out


def test_a_fixed_synthetic_budget_and_round0_sampling_shape_the_synthesis_stage():
    plan = make_plan(domainnet(**{"synthesis.total-images": 6900, "warmfed.round0-fraction": 0.5}), GPU)
    synthesis = next(stage for stage in plan.stages if stage[0] == "round 0 synthesis")
    # 6 clients, half of them asked (3); 6900 images over 3 clients x 345 classes = 6 per class and client
    assert "6 x 345 classes = 2,070 images per client, 6,210 in all" in synthesis[3]
    assert plan.synthetic_images == 6210
