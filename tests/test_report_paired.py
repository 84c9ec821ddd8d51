"""warmfed-report's paired differences: per-seed differences, the 95 % t interval and the 'within noise' verdict."""

import json

import pytest

from tests.test_report import marker, table_row, warmfed_rounds, write_run
from warmfed_flwr.report.cli import main
from warmfed_flwr.report.paired import t_interval


def test_t_interval_is_the_mean_plus_minus_t_times_the_standard_error():
    low, high = t_interval([0.01, 0.02, 0.03])
    half = 4.302653 * 0.01 / 3 ** 0.5  # t(0.975, 2 degrees of freedom) x sample std / sqrt(n)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-7)
    assert t_interval([0.05]) is None


def fedavg_rounds(after_one: float, final: float) -> list[dict]:
    return [{"round": 1, "global_acc_pooled": after_one}, {"round": 2, "global_acc_pooled": final}]


def global_suite(root) -> None:
    """WarmFed, warm start + FedAvg and FedAvg (5 rounds) on seeds 0-2, FGL on seed 0 only."""
    for seed in range(3):
        write_run(root / f"warmfed-s{seed}", {"algorithm": "warmfed", "train.rounds": 2, "seed": seed},
                  warmfed_rounds(0.50 + 0.01 * seed, 0.6, 0.80, (0.3, 0.5)), marker("WarmFed", seed))
        write_run(root / f"warm-start-fedavg-s{seed}", {"algorithm": "warmfed", "train.rounds": 2, "seed": seed},
                  warmfed_rounds(0.5, 0.6, 0.79 - 0.01 * seed, (0.3, 0.5)), marker("Warm start + FedAvg", seed))
        write_run(root / f"fedavg-5-rounds-s{seed}", {"algorithm": "fedavg", "train.rounds": 2, "seed": seed},
                  fedavg_rounds(0.40 - 0.1 * seed, 0.70 - 0.01 * seed), marker("FedAvg (5 rounds)", seed))
    write_run(root / "fgl-s0", {"algorithm": "fgl", "train.rounds": 2, "seed": 0},
              warmfed_rounds(0.4, 0.5, 0.75, (0.3, 0.5)), marker("FGL", 0))


def test_the_global_comparisons_get_per_seed_differences_intervals_and_verdicts(tmp_path):
    global_suite(tmp_path / "runs")
    out = tmp_path / "global.md"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--pair", "FedAvg (5 rounds)", "WarmFed"]) == 0
    markdown = out.read_text()
    paired = markdown[markdown.index("Paired differences (final pooled accuracy"):]
    assert table_row(paired, "WarmFed − Warm start + FedAvg") == [
        "WarmFed − Warm start + FedAvg", "0, 1, 2", "+1.0, +2.0, +3.0", "+2.0", "[-0.5, +4.5]", "within noise"]
    assert table_row(paired, "WarmFed − FGL") == ["WarmFed − FGL", "0", "+5.0", "+5.0", "-",
                                                  "one seed: no interval"]
    assert table_row(paired, "WarmFed − FedAvg (5 rounds)") == [
        "WarmFed − FedAvg (5 rounds)", "0, 1, 2", "+10.0, +11.0, +12.0", "+11.0", "[+8.5, +13.5]", "WarmFed higher"]
    assert table_row(paired, "WarmFed one-shot (r0) − FedAvg (5 rounds) after round 1")[2:] == [
        "+10.0, +21.0, +32.0", "+21.0", "[-6.3, +48.3]", "within noise"]
    assert table_row(paired, "FedAvg (5 rounds) − WarmFed")[3:] == ["-11.0", "[-13.5, -8.5]", "WarmFed higher"]
    assert markdown.index("| WarmFed |") < markdown.index("Paired differences") < markdown.index("Synthetic data")
    rows = json.loads(out.with_suffix(".json").read_text())["paired_differences"]
    assert [(r["first"], r["second"], r["first_metric"], r["second_metric"]) for r in rows] == [
        ("WarmFed", "Warm start + FedAvg", "final", "final"), ("WarmFed", "FGL", "final", "final"),
        ("WarmFed", "FedAvg (5 rounds)", "final", "final"), ("WarmFed", "FedAvg (5 rounds)", "one_shot", "round1"),
        ("FedAvg (5 rounds)", "WarmFed", "final", "final")]
    assert rows[0]["differences"] == pytest.approx([0.01, 0.02, 0.03])


def test_the_personal_comparisons_pair_dsd_with_each_peer_present(tmp_path):
    for name, slug, finals in [("WarmFed + DSD", "dsd", (0.80, 0.82)), ("WarmFed + Ditto", "ditto", (0.85, 0.88)),
                               ("Local only", "local", (0.70, 0.71))]:
        for seed, final in enumerate(finals):
            personal = {"personal_acc_mean": final, "personal_acc_std": 0.1}
            write_run(tmp_path / "runs" / f"{slug}-s{seed}", {"algorithm": "warmfed", "train.rounds": 1, "seed": seed},
                      [{"round": 1, "global_acc_pooled": 0.6, **personal}], marker(name, seed))
    out = tmp_path / "personal.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    paired = out.read_text().split("Paired differences (final personalized mean")[1]
    assert table_row(paired, "WarmFed + DSD − WarmFed + Ditto")[2:4] == ["-5.0, -6.0", "-5.5"]
    assert table_row(paired, "WarmFed + DSD − Local only")[2:4] == ["+10.0, +11.0", "+10.5"]
    assert "pFedSD" not in paired and "FedBN" not in paired


def test_a_pair_naming_no_method_of_the_runs_exits_2_naming_it(tmp_path, capsys):
    global_suite(tmp_path / "runs")
    out = tmp_path / "global.md"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--pair", "WarmFed", "FedAvg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pair 'FedAvg': no run of that method" in err
    assert not out.exists()
