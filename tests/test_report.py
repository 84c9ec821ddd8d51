"""warmfed-report over fake run directories, and the suite planning of benchmarks/compare.py."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imsave

from benchmarks.suites import plan_runs, select_variants
from warmfed_flwr.report.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPARE = "python -m benchmarks.compare --suite global"


def write_run(directory: Path, config: dict, rounds: list[dict], marker: dict | None = None,
              seconds: float = 100.0) -> Path:
    """A run directory as a finished (or stopped) run leaves it: metrics.json and, optionally, the marker."""
    directory.mkdir(parents=True)
    doc = {"config": {"data.domains": "b,a", "personalization.method": "none", **config}, "rounds": rounds,
           "time_seconds": {"total": seconds}, "events": []}
    (directory / "metrics.json").write_text(json.dumps(doc))
    if marker is not None:
        (directory / "compare-run.json").write_text(json.dumps(marker))
    return directory


def marker(variant: str, seed: int, **extra) -> dict:
    return {"variant": variant, "seed": seed, "returncode": 0, "command": COMPARE, "machine": "test box, 2 cores",
            "date": f"2026-01-0{seed + 1}T10:00:00+00:00", "overrides": {"train.rounds": 2}, **extra}


def warmfed_rounds(one_shot: float, after_one: float, final: float, quality: tuple[float, float]) -> list[dict]:
    return [
        {"round": 0, "global_acc_pooled": one_shot, "bytes_up_per_client": 1000,
         "synthetic_quality_b": quality[0], "synthetic_quality_a": quality[1]},
        {"round": 1, "global_acc_pooled": after_one, "bytes_up_per_client": 2000},
        {"round": 2, "global_acc_pooled": final, "global_acc_b": final + 0.1, "global_acc_a": final - 0.1,
         "bytes_up_per_client": 2000},
    ]


def global_runs(root: Path) -> None:
    """WarmFed and FedAvg, two seeds each, rounds up to 2; WarmFed's seed 0 wrote synthetic images."""
    for seed, (one_shot, after_one, final, quality) in enumerate([(0.5, 0.7, 0.8, (0.3, 0.5)),
                                                                  (0.4, 0.6, 0.7, (0.5, 0.7))]):
        write_run(root / f"warmfed-s{seed}", {"algorithm": "warmfed", "train.rounds": 2, "seed": seed},
                  warmfed_rounds(one_shot, after_one, final, quality), marker("WarmFed", seed), 100.0 + 20 * seed)
    for domain in ("a", "b"):
        imsave(root / "warmfed-s0" / f"synthetic_{domain}.png", np.zeros((8, 8, 3)))
    for seed, after_one in enumerate([0.3, 0.5]):
        write_run(root / f"fedavg-s{seed}", {"algorithm": "fedavg", "train.rounds": 2, "seed": seed},
                  [{"round": 1, "global_acc_pooled": after_one, "bytes_up_per_client": 500},
                   {"round": 2, "global_acc_pooled": 0.6, "global_acc_b": 0.6, "global_acc_a": 0.6,
                    "bytes_up_per_client": 500}], marker("FedAvg", seed))


def table_row(markdown: str, method: str) -> list[str]:
    """The cells of the first table row whose method cell is ``method``."""
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == method:
            return cells
    raise AssertionError(f"no row {method!r} in:\n{markdown}")


def linked_figures(markdown: str, out: Path) -> list[Path]:
    """Every figure the markdown links, as a path next to ``out``."""
    return [out.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)]


def assert_pngs(paths: list[Path]) -> None:
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000, path


def test_global_report_cells_command_figures_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    global_runs(Path("runs"))
    argv = ["runs/warmfed-s0", "runs/warmfed-s1", "runs/fedavg-s0", "runs/fedavg-s1", "--out", "report/global.md"]
    assert main(argv) == 0
    markdown = Path("report/global.md").read_text()
    assert markdown.startswith("# Global model: WarmFed, FedAvg\n")
    assert f"Command: `warmfed-report {' '.join(argv)}`" in markdown
    assert "Date: 2026-01-01T10:00:00+00:00 to 2026-01-02T10:00:00+00:00" in markdown
    assert "Machine: test box, 2 cores" in markdown and f"Runs made by: `{COMPARE}`" in markdown
    assert "Seeds: 0, 1 (each cell is mean ± population std over seeds" in markdown
    assert table_row(markdown, "method")[5:7] == ["b final", "a final"]
    assert table_row(markdown, "WarmFed") == ["WarmFed", "45.0 ± 5.0", "65.0 ± 5.0", "75.0 ± 5.0",
                                              "75.0 ± 5.0 (r2)", "85.0 ± 5.0", "65.0 ± 5.0", "5.00 kB", "1.00 kB",
                                              "110 ± 10"]
    assert table_row(markdown, "FedAvg")[:5] == ["FedAvg", "-", "40.0 ± 10.0", "60.0 ± 0.0", "60.0 ± 0.0 (r2)"]
    assert markdown.index("| WarmFed |") < markdown.index("| FedAvg |")
    quality = markdown[markdown.index("Synthetic data quality"):]
    assert table_row(quality, "WarmFed") == ["WarmFed", "60.0 ± 10.0", "40.0 ± 10.0", "50.0 ± 10.0"]
    assert "- Overrides for every variant: `train.rounds=2`" in markdown
    figures = linked_figures(markdown, Path("report/global.md"))
    assert {path.name for path in figures} == {"accuracy_per_round.png", "accuracy_vs_upload.png",
                                               "final_accuracy_per_domain.png", "synthetic_images.png"}
    assert all(path.parent == Path("report/global_figures") for path in figures)
    assert_pngs(figures)
    assert markdown.index("## Figures") < markdown.index("Per-run directories")
    assert "- WarmFed: `warmfed-s0`, `warmfed-s1`" in markdown

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    records = json.loads(Path("report/global.json").read_text(), parse_constant=refuse)["runs"]
    assert [(r["variant"], r["seed"], r["status"]) for r in records] == [
        ("WarmFed", 0, "ok"), ("WarmFed", 1, "ok"), ("FedAvg", 0, "ok"), ("FedAvg", 1, "ok")]
    assert capsys.readouterr().err == ""


def test_personal_runs_give_the_personal_table_and_the_dsd_figure(tmp_path):
    for seed, (final, share) in enumerate([(0.8, 0.6), (0.7, 0.8)]):
        personal = {"personal_acc_mean": final, "personal_acc_std": 0.1, "personal_acc_b": final + 0.1,
                    "personal_acc_a": final - 0.1, "dsd_share_t1": share, "dsd_share_t2": 1 - share}
        write_run(tmp_path / "runs" / f"dsd-s{seed}", {"algorithm": "warmfed", "personalization.method": "dsd",
                                                       "train.rounds": 2, "seed": seed},
                  [{"round": 0, "global_acc_pooled": 0.5}, {"round": 1, "global_acc_pooled": 0.6, **personal},
                   {"round": 2, "global_acc_pooled": 0.7, **personal}], marker("WarmFed + DSD", seed))
    write_run(tmp_path / "runs" / "local-s0", {"algorithm": "local", "train.rounds": 2, "seed": 0},
              [{"round": 1, "personal_acc_mean": 0.4}, {"round": 2, "personal_acc_mean": 0.5}])
    out = tmp_path / "personal.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    markdown = out.read_text()
    assert markdown.startswith("# Personalized models: WarmFed + DSD, local\n")
    assert "one-shot pooled" not in markdown
    assert table_row(markdown, "WarmFed + DSD") == ["WarmFed + DSD", "75.0 ± 5.0", "10.0", "65.0 ± 5.0",
                                                    "75.0 ± 5.0 (r1)", "85.0 ± 5.0", "65.0 ± 5.0", "70.0 ± 0.0",
                                                    "70% / 30%"]
    assert table_row(markdown, "local")[1] == "50.0" and table_row(markdown, "local")[-2:] == ["-", "-"]
    figures = linked_figures(markdown, out)
    assert "dsd_shares.png" in {path.name for path in figures}
    assert "synthetic_images.png" not in {path.name for path in figures}
    assert_pngs(figures)


def test_failed_and_unfinished_runs_are_shown_and_a_failure_exits_1(tmp_path, capsys):
    global_runs(tmp_path)
    write_run(tmp_path / "fedavg-s2", {"algorithm": "fedavg", "train.rounds": 2, "seed": 2},
              [{"round": 1, "global_acc_pooled": 0.1}],
              marker("FedAvg", 2, returncode=1, failure="flwr exit code 1; metrics.json stops at round 1 of 2"))
    write_run(tmp_path / "warmfed-s2", {"algorithm": "warmfed", "train.rounds": 2, "seed": 2},
              [{"round": 0, "global_acc_pooled": 0.5}])
    out = tmp_path / "out" / "global.md"
    assert main([str(tmp_path), "--out", str(out)]) == 1
    markdown = out.read_text()
    assert table_row(markdown, "FedAvg (1/3 seeds failed)")[3] == "60.0 ± 0.0"
    assert table_row(markdown, "warmfed")[1:3] == ["missing", "missing"]
    assert "`fedavg-s2` (failed: flwr exit code 1; metrics.json stops at round 1 of 2)" in markdown
    err = capsys.readouterr().err
    assert "failed: FedAvg seed 2" in err and "missing: warmfed seed 2" in err


@pytest.mark.parametrize("make, named", [
    (lambda root: None, "nowhere"),
    (lambda root: (root / "nowhere").mkdir(), "nowhere"),
    (lambda root: write_run(root / "nowhere", {}, []).joinpath("metrics.json").write_text("{"),
     "nowhere/metrics.json"),
])
def test_bad_input_is_one_line_naming_the_path_and_exits_2(tmp_path, capsys, make, named):
    make(tmp_path)
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / named) in err
    assert not (tmp_path / "r.md").exists()


def test_select_variants_keeps_suite_order_and_names_unknown_ones():
    assert list(select_variants("personal", ["Local only", "WarmFed + DSD"])) == ["WarmFed + DSD", "Local only"]
    with pytest.raises(ValueError, match="'No such method'"):
        select_variants("global", ["WarmFed", "No such method"])


def test_plan_runs_gives_every_variant_and_seed_its_directory_and_notes(tmp_path):
    variants = select_variants("global", ["FedAvg (5 rounds)", "FedAvg (25 rounds)"])
    plans = plan_runs(variants, [0, 1], {"train.rounds": 2}, tmp_path, "")
    assert [(p.variant, p.seed, p.run_dir.name) for p in plans] == [
        ("FedAvg (5 rounds)", 0, "fedavg-5-rounds-s0"), ("FedAvg (5 rounds)", 1, "fedavg-5-rounds-s1"),
        ("FedAvg (25 rounds)", 0, "fedavg-25-rounds-s0"), ("FedAvg (25 rounds)", 1, "fedavg-25-rounds-s1")]
    assert [p.cfg.train.rounds for p in plans] == [2, 2, 25, 25]
    assert plans[0].notes == [] and "keeps train.rounds=25" in plans[2].notes[0]


def test_compare_writes_what_its_command_line_rebuilds(tmp_path, monkeypatch):
    from benchmarks import compare

    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(compare, "run_all", lambda plans, *_args: ran.extend(plans))
    monkeypatch.setattr(compare, "machine_description", lambda _device: "test box")
    write_run(Path("runs/fedavg-5-rounds-s0"), {"algorithm": "fedavg", "train.rounds": 2, "seed": 0},
              [{"round": 1, "global_acc_pooled": 0.3}, {"round": 2, "global_acc_pooled": 0.6}],
              marker("FedAvg (5 rounds)", 0))
    argv = ["--suite", "global", "--only", "FedAvg (5 rounds)", "--output-dir", "runs", "--out", "res/global.md"]
    assert compare.main(argv) == 0
    assert [plan.run_dir for plan in ran] == [tmp_path / "runs" / "fedavg-5-rounds-s0"]
    written = Path("res/global.md").read_text()
    command = re.search(r"^Command: `(.*)`$", written, re.MULTILINE).group(1)
    assert command == "warmfed-report runs/fedavg-5-rounds-s0 --out res/global.md --title 'Global model'"
    Path("res/global.md").unlink()
    assert main(shlex.split(command)[1:]) == 0
    assert Path("res/global.md").read_text() == written


def test_a_folder_lists_its_runs_in_the_order_compare_ran_them(tmp_path):
    """Children with a marker follow its date (the suite's variant order), not their names; the rest come last."""
    from warmfed_flwr.report.collect import expand

    rounds = [{"round": 1, "global_acc_pooled": 0.5}]
    write_run(tmp_path / "zeta-s0", {"algorithm": "warmfed", "train.rounds": 1}, rounds,
              marker("Zeta", 0, date="2026-01-01T10:00:00+00:00"))
    write_run(tmp_path / "alpha-s0", {"algorithm": "fedavg", "train.rounds": 1}, rounds,
              marker("Alpha", 0, date="2026-01-02T10:00:00+00:00"))
    write_run(tmp_path / "beta-s0", {"algorithm": "fedavg", "train.rounds": 1}, rounds)
    assert [Path(p).name for p in expand([str(tmp_path)])] == ["zeta-s0", "alpha-s0", "beta-s0"]


def test_runs_with_privacy_audits_get_the_audit_table(tmp_path):
    for seed, pixel in enumerate([0.5, 0.7]):
        path = write_run(tmp_path / "runs" / f"warmfed-s{seed}", {"algorithm": "warmfed", "train.rounds": 2,
                                                                   "seed": seed},
                         warmfed_rounds(0.5, 0.6, 0.7, (0.3, 0.5)), marker("WarmFed", seed))
        doc = json.loads((path / "metrics.json").read_text())
        doc["privacy_audit"] = {
            "a": {"audit_pixel_closer_share": pixel, "audit_pixel_near_copy_share": 0.1,
                  "audit_feature_closer_share": 0.5, "audit_feature_near_copy_share": 0.05},
            "b": {"audit_pixel_closer_share": pixel - 0.2, "audit_pixel_near_copy_share": 0.3 * seed,
                  "audit_feature_closer_share": 0.7, "audit_feature_near_copy_share": 0.05}}
        (path / "metrics.json").write_text(json.dumps(doc))
    out = tmp_path / "global.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    markdown = out.read_text()
    assert "Privacy audit" in markdown
    assert table_row(markdown.split("Privacy audit")[1], "WarmFed") == [
        "WarmFed", "50.0 ± 10.0", "12.5 ± 7.5", "60.0 ± 0.0", "5.0 ± 0.0", "30.0"]


def test_dp_runs_get_the_privacy_budget_table(tmp_path):
    for seed in range(2):
        path = write_run(tmp_path / "runs" / f"dp-s{seed}", {"algorithm": "warmfed", "train.rounds": 2, "seed": seed},
                         warmfed_rounds(0.5, 0.6, 0.7, (0.3, 0.5)), marker("WarmFed, DP noise 5", seed))
        doc = json.loads((path / "metrics.json").read_text())
        doc["privacy_budget"] = {"epsilon": 8.193591, "delta": 1e-5, "noise_multiplier": 5.0, "releases_per_client": 16}
        (path / "metrics.json").write_text(json.dumps(doc))
    write_run(tmp_path / "runs" / "plain-s0", {"algorithm": "warmfed", "train.rounds": 2, "seed": 0},
              warmfed_rounds(0.5, 0.6, 0.8, (0.3, 0.5)), marker("WarmFed", 0))
    out = tmp_path / "privacy.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    budget = out.read_text().split("Privacy budget of the DP runs")[1]
    assert table_row(budget, "WarmFed, DP noise 5") == ["WarmFed, DP noise 5", "5", "8.19", "1e-05", "16"]
    assert "| WarmFed |" not in budget


def test_runs_of_one_variant_under_other_overrides_are_reported_apart(tmp_path):
    for seed in (0, 1):
        for name, extra in (("plain", {}), ("student", {"overrides": {"personalization.student-start": "personal"}})):
            personal = {"personal_acc_mean": 0.8 if name == "plain" else 0.9}
            write_run(tmp_path / "runs" / f"{name}-s{seed}", {"algorithm": "warmfed", "train.rounds": 1, "seed": seed},
                      [{"round": 1, "global_acc_pooled": 0.6, **personal}],
                      {**marker("WarmFed + DSD", seed), "overrides": {}, **extra})
    out = tmp_path / "personal.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    markdown = out.read_text()
    assert table_row(markdown, "WarmFed + DSD")[1] == "80.0 ± 0.0"
    assert table_row(markdown, "WarmFed + DSD [personalization.student-start = personal]")[1] == "90.0 ± 0.0"
