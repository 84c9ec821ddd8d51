"""The markdown document around the tables: title, how it was made, notes, figures and the run directories."""

from __future__ import annotations

import datetime
from pathlib import PurePath
from typing import Any

from warmfed_flwr.report.collect import MARKER, by_variant, is_personal
from warmfed_flwr.report.tables import tables

COMMON_NOTE = ("Final = the last round; best = the maximum over all evaluated rounds of each seed (never mixed "
               "with final), with the round(s) reached in.")
GLOBAL_NOTE = ("One-shot = round 0 of the warm-start methods (before any federated round). Upload/client = "
               "the largest client upload of each round (bytes_up_per_client) summed over rounds; r0 = the "
               "round-0 upload (adapter + prompt embeddings), included in the total; n/a = centralized (no "
               "model uploads; the data is pooled). Wall-clock = time_seconds.total of the run (from the "
               "ServerApp's start, without `flwr run` and Ray start-up; the JSON has the script's wall "
               "seconds per run).")
PERSONAL_NOTE = ("Personalized = each client's personalized model on its own test split; mean over clients, "
                 "± std over seeds; 'std over clients' = the population std over clients, mean over seeds; "
                 "'worst client' = the lowest client's final accuracy of each seed, mean ± std over seeds. "
                 "Global pooled = the global model, for reference ('-' for local-only). DSD shares = the "
                 "fraction of samples whose teacher is round t-1 / t-2 at the final round.")


def default_title(records: list[dict[str, Any]]) -> str:
    """'Personalized models' when the runs evaluated them, else 'Global model'."""
    return "Personalized models" if is_personal(records) else "Global model"


def distinct(values: list[Any]) -> list[Any]:
    """``values`` without repeats (and without None or empty ones), in first-seen order."""
    return list(dict.fromkeys(value for value in values if value))


def date_span(records: list[dict[str, Any]]) -> str:
    """When the runs finished: one date, or the first and the last."""
    dates = sorted(distinct([r.get("date") for r in records]), key=datetime.datetime.fromisoformat)
    if not dates:
        return "not recorded"
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def seeds_line(records: list[dict[str, Any]]) -> str:
    """The seeds and what a cell holds."""
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    spread = ("single seed: each cell is that run's value, no std" if len(seeds) <= 1
              else "each cell is mean ± population std over seeds")
    return f"Seeds: {', '.join(map(str, seeds)) or 'not recorded'} ({spread}; accuracies in %)"


def header_lines(title: str, command: str, records: list[dict[str, Any]]) -> list[str]:
    """Title, the command that rebuilds the document, and the runs' dates, machines, seeds and commands."""
    machines = "; ".join(distinct([r.get("machine") for r in records])) or f"not recorded (no {MARKER})"
    lines = [f"# {title}: {', '.join(by_variant(records))}", "", f"Command: `{command}`", "",
             f"Date: {date_span(records)}  ", f"Machine: {machines}  ", seeds_line(records)]
    made_by = distinct([r.get("command") for r in records])
    if made_by:
        lines[-1] += "  "
        lines += [f"Runs made by: {', '.join(f'`{c}`' for c in made_by)}  "]
    return [*lines, ""]


def rounds_note(records: list[dict[str, Any]]) -> str:
    """Which rounds each variant's 'final' refers to."""
    parts = []
    for name, group in by_variant(records).items():
        spans = sorted({(r["first_round"], r["final_round"]) for r in group if r["status"] == "ok"})
        if spans:
            text = ", ".join((f"round {b}" if a == b else f"rounds {a}-{b}")
                             + (" (round 0 = one-shot warm start)" if a == 0 else "") for a, b in spans)
            parts.append(f"{name}: {text}")
    return "; ".join(parts)


def overrides_notes(records: list[dict[str, Any]]) -> list[str]:
    """The --set overrides the runs were made with (from their markers), shared or per variant."""
    text_of = {id(r): ", ".join(f"`{k}={v!r}`" for k, v in r["overrides"].items()) for r in records
               if r.get("overrides")}
    texts = distinct(list(text_of.values()))
    if len(texts) == 1 and len(text_of) == len(records):
        return [f"Overrides for every variant: {texts[0]}"]
    return [f"Overrides {text} for: " + ", ".join(f"{r['variant']} s{r['seed']}" for r in records
                                                 if text_of.get(id(r)) == text) for text in texts]


def notes_lines(records: list[dict[str, Any]]) -> list[str]:
    """The notes below the tables."""
    specific = PERSONAL_NOTE if is_personal(records) else GLOBAL_NOTE
    rounds = rounds_note(records)
    lines = ["", "Notes:", "", f"- {COMMON_NOTE}", f"- {specific}", *([f"- Rounds: {rounds}."] if rounds else [])]
    lines += [f"- {note}" for note in overrides_notes(records)]
    lines += [f"- {note}" for note in distinct([note for r in records for note in r.get("notes", [])])]
    return lines


def figures_lines(figures: list[tuple[str, str]]) -> list[str]:
    """A 'Figures' section linking each (caption, relative path)."""
    if not figures:
        return []
    lines = ["", "## Figures", ""]
    for caption, link in figures:
        lines += [f"![{caption}]({link})", ""]
    return lines[:-1]


def run_dirs_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per variant naming its run directories (and why one is not ok)."""
    parents = {str(PurePath(r["run_dir"]).parent) for r in records}
    shared = parents.pop() if len(parents) == 1 else None
    lines = []
    for name, group in by_variant(records).items():
        dirs = ", ".join(f"`{PurePath(r['run_dir']).name if shared else r['run_dir']}`"
                         + ("" if r["status"] == "ok" else f" ({r['status']}: {r.get('reason', '')})")
                         for r in group)
        lines.append(f"- {name}: {dirs}")
    where = f" under `{shared}`" if shared else ""
    return ["", f"Per-run directories (metrics.json, summary.md, accuracy.png){where}:", *lines]


def render(title: str, command: str, records: list[dict[str, Any]], figures: list[tuple[str, str]],
           paired: list[dict[str, Any]]) -> str:
    """The whole markdown document, with the ``paired`` differences (paired.py) after the main table."""
    lines = [*header_lines(title, command, records), *tables(records, paired), *notes_lines(records),
             *figures_lines(figures), *run_dirs_lines(records), ""]
    return "\n".join(lines)

