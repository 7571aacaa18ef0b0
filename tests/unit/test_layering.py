"""The package's layering, read from the source: imports only point down, commands are thin, modules stay small.

Layers, bottom to top (each may import the ones before it and itself, nothing above):

    nn         PyTorch only: sparse layers, masks, kernel backends
    topology   PyTorch only: the DST core (distributions, criteria, updaters, schedules, optimizer remap)
    analysis   run reading, rliable aggregates, plots (no SB3, nothing else of sparse_rl)
    sb3        the SB3 integration: policies, TopologyCallback, checkpoints, reports (nn, topology)
    harness    hyperparameters, envs, run folders, training, evaluation, export, sweeps (everything above)
    commands   train, enjoy, evaluate, compare, export, sweep: argparse + main over the library

Function-level imports count too. Nothing imports a command module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sparse_rl"
COMMANDS = {"train", "enjoy", "evaluate", "compare", "export", "sweep"}
ALLOWED = {
    "nn": {"nn"},
    "topology": {"nn", "topology"},
    "analysis": {"analysis"},
    "sb3": {"nn", "topology", "sb3"},
    "harness": {"nn", "topology", "analysis", "sb3", "harness"},
    "commands": {"analysis", "sb3", "harness", "nn"},
    "package": {"sb3", "harness"},  # sparse_rl/__init__.py: lazy re-exports
}
NO_SB3 = {"nn", "topology", "analysis"}
THIRD_PARTY_RL = ("stable_baselines3", "sb3_contrib", "gymnasium", "rl_zoo3")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if len(parts) == 1:
        return "package" if parts[0] == "__init__.py" else "commands"
    return parts[0]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "sparse_rl":
                names += [f"sparse_rl.{alias.name}" for alias in node.names]
    return names


def _target(name: str) -> str | None:
    """The layer an absolute ``sparse_rl...`` import lands in (``None`` for third-party imports)."""
    parts = name.split(".")
    if parts[0] != "sparse_rl":
        return None
    if len(parts) == 1:
        return "package"
    return "commands" if parts[1] in COMMANDS else parts[1]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = _layer(path)
    for name in _imports(path):
        target = _target(name)
        if layer in NO_SB3:
            assert not name.startswith(THIRD_PARTY_RL), f"{layer}/ must not import {name} (it is below the SB3 layer)"
        if target is None:
            continue
        assert target != "commands", f"{path.name} imports the command module {name}: commands are entry points only"
        assert target in ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {name} ({target}): upward"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.relative_to(PACKAGE)}: split it"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_are_thin(command):
    tree = ast.parse((PACKAGE / f"{command}.py").read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "main" in functions and not classes, f"{command}.py: argparse + main only (library code goes below)"
    assert len((PACKAGE / f"{command}.py").read_text().splitlines()) <= 150, f"{command}.py is not thin"
