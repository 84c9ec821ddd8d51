"""benchmarks/gpu_smoke.py end to end on CPU with an SD-shaped tiny pipeline (what the GPU run does, in seconds)."""

from benchmarks import gpu_smoke
from tests.sd_shaped import build_sd_shaped_pipeline

STAGES = ["client_upload[art_painting]", "client_upload[cartoon]", "server_load", "synthesis", "release_generator",
          "warm_start", "globalization_round"]


def test_smoke_prints_time_and_peak_memory_of_every_stage(tmp_path, capsys):
    base = tmp_path / "sd-shaped"
    build_sd_shaped_pipeline(seed=0).save_pretrained(base)
    gpu_smoke.main(["--base", str(base), "--device", "cpu", "--classes", "2", "--per-class", "2",
                    "--cache-dir", str(tmp_path / "cache"), "--set", "data.image-size=32", "model.name=cnn",
                    "model.small-stem=true", "model.normalize=none", "lora.steps=1", "lora.batch-size=2",
                    "synthesis.steps=2", "synthesis.images-per-class=2", "synthesis.batch-size=4",
                    "synthesis.devices=cpu,cpu"])
    lines = capsys.readouterr().out.splitlines()
    for stage in STAGES:
        row = next((line for line in lines if line.split()[:2] == ["stage", stage]), None)
        assert row is not None, f"stage {stage} missing from:\n" + "\n".join(lines)
        assert " s " in row and "peak RSS" in row and "GiB" in row
    assert any(line.startswith("synthetic images 8, subset 4") for line in lines), lines
    assert lines[-1].startswith("total ")
