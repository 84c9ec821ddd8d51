"""The install: our Python floor is at least Flower's, constraints.txt pins every declared dependency, and the README
commands (and so CI) use it."""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor(specifiers: str) -> Version:
    """The lowest version a Requires-Python string allows."""
    return max(Version(spec.version) for spec in SpecifierSet(specifiers) if spec.operator in (">=", "==", "~="))


def test_our_python_floor_is_not_below_flowers():
    flower = importlib.metadata.metadata("flwr")["Requires-Python"]
    assert floor(PROJECT["requires-python"]) >= floor(flower), (PROJECT["requires-python"], flower)


def test_constraints_pin_every_declared_dependency_within_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    declared = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["tracking"],
                *(r for r in PROJECT["optional-dependencies"]["test"] if not r.startswith("warmfed-flwr"))]
    for requirement in map(Requirement, declared):
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt lacks {name}"
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement.specifier))


def test_both_readme_commands_use_the_constraints_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2 and all("-c constraints.txt" in command for command in commands), commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
