"""The markdown tables: global model, synthetic data quality per domain, personalized models."""

from __future__ import annotations

import statistics
from typing import Any

from warmfed_flwr.records.results import AUDIT_COLUMNS
from warmfed_flwr.report.collect import by_variant, finite, is_personal, ok_records
from warmfed_flwr.report.paired import paired_table


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    return statistics.fmean(values), statistics.pstdev(values)


def pct_cell(values: list[Any]) -> str:
    """Fractions as 'mean ± std' in percent with one decimal (just the mean for one value, '-' for none)."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


def seconds_cell(values: list[Any]) -> str:
    """Seconds as 'mean ± std', no decimals."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.0f}" if len(values) == 1 else f"{mean:.0f} ± {std:.0f}"


def bytes_cell(values: list[Any]) -> str:
    """A byte count (mean over seeds) in B / kB / MB / GB."""
    values = [v for v in values if finite(v)]
    if not values:
        return "-"
    size = statistics.fmean(values)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def rounds_label(rounds: list[Any]) -> str:
    """'r5' or 'r3/r5' for the rounds where seeds peaked."""
    found = sorted({r for r in rounds if r is not None})
    return "/".join(f"r{r}" for r in found)


def best_cell(values: list[Any], rounds: list[Any]) -> str:
    """The best value over rounds with the round(s) it was reached in."""
    cell = pct_cell(values)
    label = rounds_label(rounds)
    return f"{cell} ({label})" if cell != "-" and label else cell


def client_names(records: list[dict[str, Any]], prefix: str) -> list[str]:
    """Client names of ``prefix``<name> keys in the final rounds, in data.domains order, then the rest sorted."""
    skip = {"pooled", "mean", "std"}
    names = {key.removeprefix(prefix) for r in records for key in r["final"] if key.startswith(prefix)} - skip
    order = [d.strip() for r in records for d in str(r.get("domains", "")).split(",") if d.strip()]
    ranked = [n for n in dict.fromkeys(order) if n in names]
    return ranked + sorted(names - set(ranked))


def final_values(records: list[dict[str, Any]], key: str) -> list[Any]:
    """``key`` of the final round of every record."""
    return [r["final"].get(key) for r in records]


def method_cell(name: str, records: list[dict[str, Any]]) -> str:
    """The variant's name, noting seeds that failed or are missing."""
    bad = [r for r in records if r["status"] != "ok"]
    if not bad:
        return name
    statuses = sorted({r["status"] for r in bad})
    return f"{name} ({len(bad)}/{len(records)} seeds {'/'.join(statuses)})"


def status_row(name: str, records: list[dict[str, Any]], width: int) -> list[str]:
    """A row of a variant without a finished run: its status in every cell."""
    status = "/".join(sorted({r["status"] for r in records}))
    return [name] + [status] * (width - 1)


def global_row(name: str, records: list[dict[str, Any]], domains: list[str]) -> list[str]:
    """One row of the global table."""
    ok = ok_records(records)
    if not ok:
        return status_row(name, records, 8 + len(domains))
    warm = any(r["one_shot_pooled"] is not None for r in ok)
    return [
        method_cell(name, records),
        pct_cell([r["one_shot_pooled"] for r in ok]) if warm else "-",
        pct_cell([r["round1_pooled"] for r in ok]),
        pct_cell(final_values(ok, "global_acc_pooled")),
        best_cell([r["best_pooled"] for r in ok], [r["best_pooled_round"] for r in ok]),
        *[pct_cell(final_values(ok, f"global_acc_{d}")) for d in domains],
        bytes_cell([r["upload_per_client_total"] for r in ok]) if ok[0]["upload_per_client_total"] is not None
        else "n/a",
        bytes_cell([r["upload_per_client_round0"] for r in ok]) if warm else "-",
        seconds_cell([r["time_seconds"].get("total") for r in ok]),
    ]


def dsd_cell(records: list[dict[str, Any]]) -> str:
    """DSD teacher shares t-1 / t-2 at the final round, in percent (mean over seeds), '-' where absent."""
    shares = [final_values(records, key) for key in ("dsd_share_t1", "dsd_share_t2")]
    if not any(finite(v) for values in shares for v in values):
        return "-"
    cells = [f"{100 * statistics.fmean(vs):.0f}%" if (vs := [v for v in values if finite(v)]) else "-"
             for values in shares]
    return " / ".join(cells)


def personal_row(name: str, records: list[dict[str, Any]], clients: list[str]) -> list[str]:
    """One row of the personalization table."""
    ok = ok_records(records)
    if not ok:
        return status_row(name, records, 7 + len(clients))
    client_std = [v for v in final_values(ok, "personal_acc_std") if finite(v)]
    per_client = [[v for c in clients if finite(v := r["final"].get(f"personal_acc_{c}"))] for r in ok]
    return [
        method_cell(name, records),
        pct_cell(final_values(ok, "personal_acc_mean")),
        f"{100 * statistics.fmean(client_std):.1f}" if client_std else "-",
        pct_cell([min(values) for values in per_client if values]),
        best_cell([r["best_personal"] for r in ok], [r["best_personal_round"] for r in ok]),
        *[pct_cell(final_values(ok, f"personal_acc_{c}")) for c in clients],
        pct_cell(final_values(ok, "global_acc_pooled")),
        dsd_cell(ok),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def global_table(records: list[dict[str, Any]]) -> list[str]:
    """The global-model table."""
    domains = client_names(ok_records(records), "global_acc_")
    header = ["method", "one-shot pooled (r0)", "pooled after round 1", "final pooled", "best pooled (round)",
              *[f"{d} final" for d in domains], "upload/client, all rounds", "upload/client, r0", "wall-clock s"]
    return markdown_table(header, [global_row(n, rs, domains) for n, rs in by_variant(records).items()])


def quality_table(records: list[dict[str, Any]]) -> list[str]:
    """Per-domain synthetic data quality of the warm-start variants ([] when no run recorded it)."""
    ok = [r for r in ok_records(records) if r.get("synthetic_quality")]
    if not ok:
        return []
    domains = sorted({d for r in ok for d in r["synthetic_quality"]})
    rows = []
    for name, group in by_variant(ok).items():
        means = [statistics.fmean(r["synthetic_quality"].values()) for r in group]
        rows.append([name, *[pct_cell([r["synthetic_quality"].get(d) for r in group]) for d in domains],
                     pct_cell(means)])
    return ["", "Synthetic data quality per client domain (a classifier trained on that client's synthetic images "
            "only, tested on its real test split; %):", "",
            *markdown_table(["method", *domains, "mean"], rows)]


def privacy_table(records: list[dict[str, Any]]) -> list[str]:
    """The clients' privacy audits per variant: each share is the mean over clients, then mean ± std over seeds; the
    last column the largest pixel near-copy share of any client and seed ([] when no run recorded an audit)."""
    ok = [r for r in ok_records(records) if r.get("privacy_audit")]
    if not ok:
        return []
    rows = []
    for name, group in by_variant(ok).items():
        per_run = [{key: statistics.fmean(values) for key in AUDIT_COLUMNS.values()
                    if (values := [client[key] for client in r["privacy_audit"].values() if key in client])}
                   for r in group]
        worst = max(client.get("audit_pixel_near_copy_share", 0.0) for r in group
                    for client in r["privacy_audit"].values())
        rows.append([name, *[pct_cell([run.get(key) for run in per_run]) for key in AUDIT_COLUMNS.values()],
                     f"{100 * worst:.1f}"])
    return ["", "Privacy audit (synthetic images made from each client's own upload against that client's private "
            "train and test images; %): closer-share 50 = no sign of memorisation, 100 = copies; near-copy about 5 "
            "without memorisation:", "",
            *markdown_table(["method", *AUDIT_COLUMNS, "largest pixel near-copy of a client"], rows)]


def budget_table(records: list[dict[str, Any]]) -> list[str]:
    """The DP runs' privacy budget per variant: noise multiplier, epsilon at delta and the noised parts each client
    sent, distinct values over seeds joined by '/' ([] when no run recorded a budget)."""
    ok = [r for r in ok_records(records) if r.get("privacy_budget")]
    if not ok:
        return []
    rows = []
    for name, group in by_variant(ok).items():
        budgets = [r["privacy_budget"] for r in group]
        cells = [" / ".join(dict.fromkeys(f"{b[key]:{spec}}" for b in budgets))
                 for key, spec in (("noise_multiplier", ".4g"), ("epsilon", ".3g"), ("delta", "g"),
                                   ("releases_per_client", "d"))]
        rows.append([name, *cells])
    return ["", "Privacy budget of the DP runs (client-level local DP over all of a client's uploads, RDP accountant; "
            "docs/privacy.md):", "",
            *markdown_table(["method", "noise multiplier", "epsilon", "delta", "noised parts per client"], rows)]


def personal_table(records: list[dict[str, Any]]) -> list[str]:
    """The personalization table."""
    clients = client_names(ok_records(records), "personal_acc_")
    header = ["method", "personalized mean (final)", "std over clients", "worst client (final)",
              "best personalized mean (round)",
              *[f"{c} personal final" for c in clients], "global pooled final (ref.)", "DSD share t-1 / t-2 (final)"]
    return markdown_table(header, [personal_row(n, rs, clients) for n, rs in by_variant(records).items()])


def tables(records: list[dict[str, Any]], paired: list[dict[str, Any]]) -> list[str]:
    """The tables the runs call for: personalized models when any run evaluated them, else the global model; the
    ``paired`` differences (paired.py); then synthetic data quality, the privacy audit and the DP budget when any run
    recorded them."""
    main = personal_table(records) if is_personal(records) else global_table(records)
    return main + paired_table(paired) + quality_table(records) + privacy_table(records) + budget_table(records)
