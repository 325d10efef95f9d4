"""The package layers: no module imports a package above its own (issue: one owner for every piece of state)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "worker"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"errors", "secrets", "config", "samples", "text", "calibration"},
    {"runtime", "obs", "kafka_clients"},
    {"models"},
    {"vision"},
    {"embed"},
    {"recognition"},
    {"compat"},
    {"watchlist"},
    {"visitors"},
    {"stream"},
    {"admin"},
    {"evaluation", "bench", "demo", "training"},
    {"cli", "__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """The first component under worker/ ('stream' for worker.stream.sinks, 'config' for worker.config)."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "worker" or name.startswith("worker.")]


MODULES = sorted(p for p in ROOT.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert units <= LEVEL.keys(), f"give these a layer: {sorted(units - LEVEL.keys())}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_up_the_layers(path: Path):
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    upward = [name for name in _imports(path) if _unit(name) and LEVEL.get(_unit(name), -1) > LEVEL[own]]
    assert not upward, f"{path.relative_to(ROOT)} ({own}) imports from a layer above it: {upward}"
