"""The floors of docs/architecture.md: a module imports only its own unit and the floors below it, and the core never
imports Flower."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = [
    {"errors"},
    {"config"},
    {"wire", "records", "learning", "data"},
    {"trust", "generative"},
    {"methods"},
    {"plan", "report"},
    {"runtime", "actor_recovery"},
    {"strategies", "clients"},
    {"server_app", "client_app"},
]
"""Bottom to top. Units on one floor never import each other."""
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}
FLOWER_SIDE = {"runtime", "actor_recovery", "strategies", "clients", "server_app", "client_app"}


def unit_of(module: str) -> str | None:
    """The unit of a dotted project module (a warmfed_flwr subpackage or top-level module, strategies, clients)."""
    parts = module.split(".")
    if parts[0] in ("strategies", "clients"):
        return parts[0]
    if parts[0] == "warmfed_flwr" and len(parts) > 1:
        return parts[1]
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, lazy ones included; ``from pkg import mod`` names
    ``pkg.mod``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def project_modules() -> list[tuple[str, Path]]:
    modules = []
    for package in ("warmfed_flwr", "strategies", "clients"):
        for path in sorted((ROOT / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if unit_of(dotted) not in (None, "__init__"):
                modules.append((dotted, path))
    return modules


def test_every_unit_has_a_floor():
    units = {unit_of(module) for module, _ in project_modules()}
    assert units == set(FLOOR), units ^ set(FLOOR)


def test_imports_go_only_down_the_floors():
    wrong = []
    for module, path in project_modules():
        unit = unit_of(module)
        for line, target in imports(path):
            other = unit_of(target)
            if other is None or other == unit or other not in FLOOR:
                continue
            if FLOOR[other] >= FLOOR[unit]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({unit}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_core_never_imports_flower():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for module, path in project_modules() if unit_of(module) not in FLOWER_SIDE
             for line, target in imports(path) if target.split(".")[0] == "flwr"]
    assert not wrong, "\n".join(wrong)
