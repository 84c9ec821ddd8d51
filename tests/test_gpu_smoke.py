"""benchmarks/gpu_smoke.py and benchmarks/gpu_check.py end to end on CPU with CPU-sized SD pipelines (what the GPU
run does, in seconds), and the smoke's checks against warmfed-plan."""

import json

import pytest
import torch

from benchmarks import gpu_check, gpu_smoke
from tests.sd_shaped import build_sd_shaped_pipeline, narrow_sd_configs
from warmfed_flwr.generative import random_sd
from warmfed_flwr.generative.lora import adapter_schema
from warmfed_flwr.generative.pipeline import load_pipeline
from warmfed_flwr.wire import payload

STAGES = ["client_upload[art_painting]", "client_upload[cartoon]", "server_load", "synthesis", "release_generator",
          "warm_start", "globalization_round"]
CPU_SIZES = ["--classes", "2", "--per-class", "2", "--set", "data.image-size=32", "model.name=cnn",
             "model.small-stem=true", "model.normalize=none", "lora.steps=1", "lora.batch-size=2", "synthesis.steps=2",
             "synthesis.images-per-class=2", "synthesis.batch-size=4"]


def test_smoke_prints_time_and_peak_memory_of_every_stage(tmp_path, capsys):
    base = tmp_path / "sd-shaped"
    build_sd_shaped_pipeline(seed=0).save_pretrained(base)
    gpu_smoke.main(["--base", str(base), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), *CPU_SIZES,
                    "synthesis.devices=cpu,cpu"])
    lines = capsys.readouterr().out.splitlines()
    for stage in STAGES:
        row = next((line for line in lines if line.split()[:2] == ["stage", stage]), None)
        assert row is not None, f"stage {stage} missing from:\n" + "\n".join(lines)
        assert " s " in row and "peak RSS" in row and "GiB" in row
    assert any(line.startswith("synthetic images 8, subset 4") for line in lines), lines
    assert sum(line.startswith("LoRA 1 steps x batch 2 at 64 px: ") for line in lines) == 2, lines
    assert any(line.startswith("synthesis 8 images at 32 px in ") and "images/s" in line for line in lines), lines
    assert "plan check synthetic images: plan 8 images, measured 8: agree" in lines
    assert any(line.startswith("plan check upload bytes per client") and line.endswith("agree") for line in lines)
    assert lines[-1].startswith("total ")


def test_plan_memory_estimates_count_as_right_within_a_quarter():
    assert gpu_smoke.PlanCheck("m", 1.2 * 2**30, 2**30, "B", exact=False).ok
    assert gpu_smoke.PlanCheck("m", 0.8 * 2**30, 2**30, "B", exact=False).ok
    assert not gpu_smoke.PlanCheck("m", 1.3 * 2**30, 2**30, "B", exact=False).ok
    assert "NOT within 25%" in gpu_smoke.PlanCheck("m", 0.7 * 2**30, 2**30, "B", exact=False).text()
    assert not gpu_smoke.PlanCheck("n", 8, 9, "images", exact=True).ok
    assert gpu_smoke.PlanCheck("n", 8, 8, "images", exact=True).text().endswith(": agree")


@pytest.fixture(scope="module")
def gpu_check_on_cpu(tmp_path_factory):
    """benchmarks/gpu_check.py on a narrow random-weight SD 2.1-base pipeline, on CPU: (report, smoke JSONs, base)."""
    root = tmp_path_factory.mktemp("gpu-check")
    base = random_sd.save_random_pipeline(random_sd.build_random_pipeline(narrow_sd_configs(), seed=0),
                                          root / "random", {"arch": "narrow", "seed": 0})
    gpu_check.main(["--base", str(base), "--device", "cpu", "--work", str(root / "work"), "--logs", str(root / "logs"),
                    "--out", str(root / "gpu_smoke.md"), "--", *CPU_SIZES])
    results = [json.loads((root / "logs" / f"gpu_smoke_{i}.json").read_text()) for i in range(len(gpu_check.RUNS))]
    return (root / "gpu_smoke.md").read_text(), results, base


def test_gpu_check_runs_one_client_then_two_at_once_and_reports_them(gpu_check_on_cpu):
    report, (one, two), base = gpu_check_on_cpu
    assert (one["clients"], one["concurrent"], two["clients"], two["concurrent"]) == (1, False, 2, True)
    assert one["random_weights"] == {"arch": "narrow", "seed": 0} and one["generator_size"] == 32
    assert [r["name"] for r in two["rows"]] == STAGES
    assert two["round0_seconds"] > 0 and two["images_per_second"] > 0
    assert "## 1 client" in report and "## 2 clients at once on one GPU (0.5 each)" in report
    assert report.count("exit code 0") == 2 and "| client_upload[cartoon] |" in report
    assert "Two clients fit on one GPU at 0.5 each: yes" in report
    assert "no accuracy is reported" in report and "accuracy on" not in report


def test_plan_and_smoke_agree_on_upload_bytes_and_synthetic_images(gpu_check_on_cpu):
    _, results, base = gpu_check_on_cpu
    cfg = gpu_smoke.smoke_config("paper/pacs", str(base), "cpu", {}, 1)
    adapter = payload.schema_bytes(adapter_schema(load_pipeline(str(base), torch.device("cpu")), cfg.lora))
    expected_upload = 2 * 77 * 64 * 2 + adapter // 2  # 2 classes x 77 tokens x 64 dims, and the adapter, in float16
    for result, clients in zip(results, (1, 2), strict=True):
        checks = {check["what"]: check for check in result["checks"]}
        upload, images = checks["upload bytes per client"], checks["synthetic images"]
        assert upload["planned"] == upload["measured"] == expected_upload and upload["ok"]
        assert images["planned"] == images["measured"] == result["synthetic_images"] == clients * 2 * 2
        assert images["ok"]
