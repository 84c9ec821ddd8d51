"""Run summaries: titles that name what ran, per-client columns in numeric order."""

from warmfed_flwr.config.loading import resolve
from warmfed_flwr.records.results import SYNTHETIC_QUALITY_PREFIX, summarize


def test_title_names_the_algorithm_that_ran_not_only_the_experiment_file():
    fgl = resolve({"algorithm": "fgl"}).to_flat()
    assert summarize([], fgl, {}).splitlines()[0] == "# fgl (experiment warmfed, seed 0)"
    dsd = resolve({"personalization.method": "dsd", "seed": 2}).to_flat()
    assert summarize([], dsd, {}).splitlines()[0] == "# warmfed + dsd (experiment warmfed, seed 2)"


def test_client_columns_sort_by_number():
    names = ["client-10", "client-2", "client-1"]
    rounds = [{"round": 0, "global_acc_pooled": 0.5, **{f"global_acc_{n}": 0.5 for n in names},
               **{f"{SYNTHETIC_QUALITY_PREFIX}{n}": 0.5 for n in names}}]
    lines = summarize(rounds, {}, {}).splitlines()
    headers = [line for line in lines if line.startswith("| round |") or line.startswith("| client-")]
    assert headers == ["| round | pooled | client-1 | client-2 | client-10 |",
                       "| client-1 | client-2 | client-10 | mean |"]


def test_summary_lists_the_runs_events():
    events = [{"kind": "domain_left_out", "round": 0, "client": "fonts", "reason": "not sampled"}]
    text = summarize([], {}, {}, events)
    assert "## Events" in text and "- round 0, domain_left_out; client: fonts; reason: not sampled" in text
    assert "## Events" not in summarize([], {}, {})
