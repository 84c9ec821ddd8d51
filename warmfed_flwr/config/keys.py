"""Keep pyproject.toml's run-config keys and docs/config.md in step with the config schema.

``python -m warmfed_flwr.config.keys --check`` prints one line per difference and exits 1 (0 when in step);
``--write`` rewrites the ``[tool.flwr.app.config]`` block and docs/config.md from the schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from warmfed_flwr.config.loading import KEYS_DOC, UNSET, bounds, interval, schema, schema_fields, usage_conditions
from warmfed_flwr.config.schema import ExperimentConfig, Section

ROOT = Path(__file__).resolve().parent.parent.parent
PYPROJECT = ROOT / "pyproject.toml"
DOC = ROOT / KEYS_DOC
TABLE = "[tool.flwr.app.config]"
DEFAULT_EXPERIMENT = "warmfed"
WRITE_COMMAND = "python -m warmfed_flwr.config.keys --write"


def render_block() -> str:
    """The ``[tool.flwr.app.config]`` table: ``experiment`` names the YAML, every other key is UNSET."""
    lines = [TABLE, f'experiment = "{DEFAULT_EXPERIMENT}"']
    lines += [f'"{key}" = "{UNSET}"' for key in schema() if key != "experiment"]
    return "\n".join(lines) + "\n"


def rewrite_pyproject(text: str) -> str:
    """``text`` with its ``[tool.flwr.app.config]`` table (header up to the next table or the end) from the schema."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == TABLE]
    if not starts:
        return text.rstrip("\n") + "\n\n" + render_block()
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[:start]) + render_block() + "".join(lines[end:])


def pyproject_problems(text: str) -> list[str]:
    """One line per key the pyproject table lacks, has beyond the schema, or sets to something other than UNSET."""
    table: dict[str, Any] = tomllib.loads(text).get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if table is None:
        return [f"pyproject.toml has no {TABLE} table"]
    keys = list(schema())
    problems = [f"pyproject.toml {TABLE} lacks '{key}' (a schema key)" for key in keys if key not in table]
    problems += [f"pyproject.toml {TABLE} has '{key}', which is not a schema key" for key in table if key not in keys]
    problems += [f"pyproject.toml {TABLE} sets '{key}' = {value!r}; every key but 'experiment' must be \"{UNSET}\""
                 for key, value in table.items() if key != "experiment" and key in keys and value != UNSET]
    return problems


def _allowed(info: FieldInfo) -> str:
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if annotation is bool:
        return "true, false"
    kind = "integer" if annotation is int else "number" if annotation is float else None
    if kind is None:
        return "text"
    found = bounds(info)
    return f"{kind} in {interval(found)}" if found else kind


def _read_when(key: str) -> str:
    conditions = usage_conditions(key)
    return "; ".join(f"`{on}` in {', '.join(values)}" for on, values in conditions.items()) or "always"


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: pipes and angle brackets escaped."""
    return text.replace("|", "\\|").replace("<", "\\<")


def render_doc() -> str:
    """docs/config.md: every key with its default, allowed values, when it is read and what it means."""
    lines = [
        "# Config keys",
        "",
        f"<!-- Written by `{WRITE_COMMAND}` from warmfed_flwr/config/schema.py; edit the schema, not this file. -->",
        "",
        "Every key an experiment YAML under `conf/` or `flwr run . --run-config \"section.key=value\"` can set, with",
        "its default. A YAML states only what differs from these defaults; an unknown key, a wrong type or a value",
        "outside its range stops the run with one line naming the key. \"Read when\" says which runs use the key;",
        "the others ignore it.",
    ]
    defaults = schema()
    fields = schema_fields()
    for title, section in _sections():
        lines += ["", f"## {title}", ""]
        if section is not None and section.__doc__:
            lines += [section.__doc__.strip(), ""]
        lines += ["| key | default | allowed | read when | description |", "|---|---|---|---|---|"]
        for key, (info, owner) in fields.items():
            if owner is (section or ExperimentConfig):
                lines.append(f"| `{key}` | `{json.dumps(defaults[key])}` | {_cell(_allowed(info))} | "
                             f"{_read_when(key)} | {_cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


def _sections() -> list[tuple[str, type[Section] | None]]:
    """("Run", None) for the top-level keys, then each section's title and model, in schema order."""
    found: list[tuple[str, type[Section] | None]] = [("Run", None)]
    for name, info in ExperimentConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            found.append((f"`{name}`", info.annotation))
    return found


def check(pyproject_text: str, doc_text: str | None) -> list[str]:
    """Every way the pyproject table and docs/config.md (None: missing) differ from the schema, one line each."""
    problems = pyproject_problems(pyproject_text)
    if doc_text != render_doc():
        problems.append(f"{KEYS_DOC} is not the schema's current rendering")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check (exit 1 on any difference) or write pyproject.toml's run-config table and docs/config.md."""
    parser = argparse.ArgumentParser(prog="python -m warmfed_flwr.config.keys", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="report keys out of step with the schema; exit 1 if any")
    mode.add_argument("--write", action="store_true", help="rewrite the pyproject table and docs/config.md")
    args = parser.parse_args(argv)
    if args.write:
        PYPROJECT.write_text(rewrite_pyproject(PYPROJECT.read_text()))
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(render_doc())
        print(f"wrote {TABLE} of {PYPROJECT.name} and {KEYS_DOC} ({len(schema())} keys)")
        return 0
    problems = check(PYPROJECT.read_text(), DOC.read_text() if DOC.is_file() else None)
    for problem in problems:
        print(problem)
    if problems:
        print(f"fix: {WRITE_COMMAND}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
