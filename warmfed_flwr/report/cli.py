"""warmfed-report: finished run directories -> markdown tables, the records as JSON, and figures.

    warmfed-report RUN_DIR [RUN_DIR ...] --out FILE.md [--title TEXT] [--pair METHOD METHOD ...]

A RUN_DIR is a run directory (it holds metrics.json or a compare-run.json marker) or a folder of them (taken
sorted by name). Methods appear in the order they first appear in the arguments; seeds of a method are
averaged (mean ± population std). The paired-difference table holds the comparisons of paired.py whose methods
are both present, then every --pair. Writes FILE.md, FILE.json (the records and the paired differences, strict
JSON) and the figures under FILE_figures/. Exits 2 on a bad path, an unreadable metrics.json or a --pair naming
no method of the runs, 1 when a run failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from warmfed_flwr.records.results import strict_json
from warmfed_flwr.report.collect import ReportInputError, collect
from warmfed_flwr.report.document import date_span, default_title, distinct, render
from warmfed_flwr.report.figures import write_figures
from warmfed_flwr.report.paired import paired_differences, report_pairs

PROG = "warmfed-report"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory or a folder of them")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.md",
                        help="markdown file; FILE.json and FILE_figures/ are written next to it")
    parser.add_argument("--title", help="heading before the list of methods (default: 'Global model', or "
                                        "'Personalized models' when the runs evaluated personalized models)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"),
                        help="also compare method FIRST minus method SECOND (their variant names); repeatable")
    return parser.parse_args(argv)


def figure_dir(out: Path) -> Path:
    """Where the figures of ``out`` go: <out dir>/<out stem>_figures/."""
    return out.parent / f"{out.stem}_figures"


def json_document(title: str, command: str, records: list[dict[str, Any]],
                  paired: list[dict[str, Any]]) -> dict[str, Any]:
    """What FILE.json holds: how the report was made, what the runs were made with, every record and the paired
    differences."""
    return {"title": title, "command": command, "date": date_span(records),
            "machines": distinct([r.get("machine") for r in records]),
            "seeds": sorted({r["seed"] for r in records if r.get("seed") is not None}),
            "runs_made_by": distinct([r.get("command") for r in records]), "runs": records,
            "paired_differences": paired}


def warn_duplicates(records: list[dict[str, Any]]) -> None:
    """Name every method and seed that two run directories claim (both enter the mean)."""
    counts = Counter((r["variant"], r["seed"]) for r in records)
    for (variant, seed), count in counts.items():
        if count > 1:
            dirs = ", ".join(r["run_dir"] for r in records if (r["variant"], r["seed"]) == (variant, seed))
            print(f"warning: {variant} seed {seed} is in {count} run directories ({dirs}); all enter the mean",
                  file=sys.stderr)


def check_pairs(records: list[dict[str, Any]], asked: Sequence[Sequence[str]]) -> None:
    """Raise ReportInputError on a --pair that names a method none of the runs has."""
    known = list(dict.fromkeys(r["variant"] for r in records))
    for name in dict.fromkeys(name for pair in asked for name in pair):
        if name not in known:
            raise ReportInputError(f"--pair {name!r}: no run of that method; the methods are {', '.join(known)}")


def write_report(run_dirs: Sequence[str], out: Path, title: str | None, command: str,
                 asked: Sequence[Sequence[str]] = ()) -> list[dict[str, Any]]:
    """Collect the runs, then write ``out``, its JSON and its figures; return the records. Raises
    ReportInputError on a bad path, an unreadable metrics.json or an ``asked`` pair naming an absent method."""
    records = collect(run_dirs)
    check_pairs(records, asked)
    paired = paired_differences(records, report_pairs(records, asked))
    title = title or default_title(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = write_figures(records, figure_dir(out))
    links = [(caption, f"{figure_dir(out).name}/{path.name}") for caption, path in figures]
    out.write_text(render(title, command, records, links, paired))
    document = json_document(title, command, records, paired)
    out.with_suffix(".json").write_text(json.dumps(strict_json(document), indent=1, allow_nan=False))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; 2 on a bad argument or input, 1 when a run failed, 0 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.out.suffix != ".md":
        print(f"error: --out {args.out}: name a .md file (the JSON and the figures go next to it)", file=sys.stderr)
        return 2
    try:
        records = write_report(args.run_dirs, args.out, args.title, shlex.join([PROG, *argv]), args.pair)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_duplicates(records)
    figures = figure_dir(args.out)
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}"
          + (f" and figures in {figures}" if figures.is_dir() else ""))
    for record in records:
        if record["status"] != "ok":
            print(f"{record['status']}: {record['variant']} seed {record['seed']} ({record['reason']}) "
                  f"in {record['run_dir']}", file=sys.stderr)
    return 1 if any(record["status"] == "failed" for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
