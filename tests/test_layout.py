"""The package's import order: no import cycle, and the rooms PaWModule wires sit below module.py (static,
from the source: no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "paw_lightning"


def import_graph() -> dict[str, set[str]]:
    """module -> the paw_lightning modules it imports anywhere in its source (function-level imports too)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    assert {"paw_lightning.cli", "paw_lightning.play", "paw_lightning.cli_config"} <= set(graph)
    cycles = sorted(name for name in graph if name in reachable(graph, name))
    assert cycles == []


def test_the_rooms_module_py_wires_sit_below_it():
    graph = import_graph()
    below = ("rollout_prep", "update", "step_memory", "heads", "validation", "records", "options")
    for name in below:
        assert "paw_lightning.module" not in reachable(graph, f"paw_lightning.{name}"), name
    assert {f"paw_lightning.{name}" for name in below} <= reachable(graph, "paw_lightning.module")
