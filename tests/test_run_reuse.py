"""benchmarks/run_suite.py: when a finished run directory can stand in for a planned run."""

import json
from pathlib import Path

from benchmarks.run_suite import reuse_problem
from benchmarks.suites import plan_runs, select_variants


def write_finished_run(run_dir: Path, config: dict) -> None:
    run_dir.mkdir(parents=True)
    rounds = [{"round": r, "global_acc_pooled": 0.5} for r in range(config["train.rounds"] + 1)]
    (run_dir / "metrics.json").write_text(json.dumps({"config": config, "rounds": rounds}))


def warmfed_plan(tmp_path: Path):
    return plan_runs(select_variants("ablation", ["WarmFed"]), [0], {}, tmp_path, "")[0]


def test_a_run_from_before_a_new_key_is_reused_when_the_key_is_at_its_default(tmp_path):
    plan = warmfed_plan(tmp_path)
    stored = {k: v for k, v in plan.cfg.to_flat().items() if not k.startswith("privacy.")}
    write_finished_run(plan.run_dir, stored)
    assert reuse_problem(plan) == ""


def test_a_run_with_a_different_used_value_is_not_reused(tmp_path):
    plan = warmfed_plan(tmp_path)
    write_finished_run(plan.run_dir, {**plan.cfg.to_flat(), "synthesis.images-per-class": 7})
    assert "synthesis.images-per-class: run has 7" in reuse_problem(plan)


def test_a_new_key_away_from_its_default_forces_a_rerun(tmp_path):
    plan = plan_runs(select_variants("ablation", ["WarmFed"]), [0], {"privacy.noise-multiplier": 0.1}, tmp_path,
                     "")[0]
    stored = {k: v for k, v in plan.cfg.to_flat().items() if k != "privacy.noise-multiplier"}
    write_finished_run(plan.run_dir, stored)
    assert "privacy.noise-multiplier: run has 0.0, wanted 0.1" in reuse_problem(plan)
