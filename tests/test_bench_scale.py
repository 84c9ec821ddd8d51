"""The scaling benchmark's arithmetic: the share of time outside compute and the checks against the targets."""

import pytest

from benchmarks.bench_scale import figures, overhead_lines, ratio_lines, table


def metrics(total: float, lora: float, synthesis: float, compute: list[float], down: int) -> dict:
    rounds = [{"round": 0, "client_compute_seconds_sum": compute[0], "bytes_down_per_client": 0,
               "bytes_up_per_client": 500, "synthetic_images": 400}]
    rounds += [{"round": r, "client_compute_seconds_sum": c, "bytes_down_per_client": down,
                "bytes_up_per_client": 1000, "global_acc_pooled": 0.5} for r, c in enumerate(compute[1:], 1)]
    return {"rounds": rounds, "time_seconds": {"client_lora": lora, "synthesis": synthesis, "total": total}}


def test_not_compute_share_divides_client_compute_by_the_actors():
    row = figures("warmfed", 4, 110.0, metrics(100.0, 50.0, 20.0, [60.0, 20.0], 2000), 2 * 1024**2, 1024**2, 2)
    # compute = synthesis 20 + (60 + 20) / 2 actors = 60 of 100 s
    assert row["not_compute_share"] == pytest.approx(0.4)
    assert row["bytes_down_per_client"] == 2000 and row["bytes_up_per_client"] == 1500
    assert row["final_acc"] == 0.5 and row["synthetic_images"] == 400


def test_ratio_lines_flag_what_grows_past_its_target():
    small = figures("warmfed", 4, 100.0, metrics(100.0, 50.0, 20.0, [60.0, 20.0], 2000), 1024**2, 1000 * 1024**2, 1)
    big = figures("warmfed", 64, 400.0, metrics(400.0, 300.0, 40.0, [300.0, 52.0], 2400), 1024**2, 1300 * 1024**2, 1)
    lines = "\n".join(ratio_lines([big, small]))
    assert "server synthesis seconds: 64 vs 4 clients x2.00 (ABOVE the x1.5 target)" in lines
    assert "peak memory per client actor: 64 vs 4 clients x1.30 (ABOVE the x1.25 target)" in lines
    assert "bytes each client receives: 64 vs 4 clients x1.20 (within the x1.25 target)" in lines
    assert "time not in compute at 64 clients: 2 % (within the 15 % target)" in lines
    assert len(table([small, big])) == 4


def test_overhead_splits_into_a_fixed_part_and_a_part_per_message():
    low = figures("fedavg", 4, 50.0, metrics(30.0, 0.0, 0.0, [0.0, 10.0], 1000), 1024**2, 1024**2, 1)
    high = figures("fedavg", 64, 60.0, metrics(40.0, 0.0, 0.0, [0.0, 10.0], 1000), 1024**2, 1024**2, 1)
    low["messages"], high["messages"] = 20, 520
    lines = "\n".join(overhead_lines([low, high]))
    # outside compute: 20 s with 20 messages, 30 s with 520 -> 20 ms per message, 19.6 s fixed (49 % of 40 s)
    assert "20 ms per extra message and about 20 s fixed per run, 49 % of the 64-client run" in lines
