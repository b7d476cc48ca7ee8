"""The import graph of xenhil's own packages, for tests/test_import_graph.py.

Run as a script on a source tree (``python import_graph.py ROOT``, where
ROOT/xenhil/ holds harness/ and fixtures/, the installed layout): it prints,
as JSON, what the test checks.  A subprocess, with ROOT first on its path,
so that the graph is that of ROOT's files (a planted cycle in a temporary
copy included), never of the modules this process imported.  Module names
are reported without the ``xenhil.`` namespace, as the packages are named
in the tree.

The graph is grimp's (every import statement, a function's lazy imports
too) plus the modules a plugin loads by name (``pytest_plugins = [...]``),
which pytest imports as surely as an import statement.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

#: The namespace xenhil installs its packages under (pyproject.toml).
NAMESPACE = "xenhil."
#: The packages of the tree, as imported.
PACKAGES = ("xenhil.harness", "xenhil.fixtures")
#: The pytest plugin: the entry point (pyproject's pytest11), the one
#: module of harness/ that may import pytest, and the root that loads the
#: fixtures.
PLUGIN = "harness.plugin"
#: pytest and the machinery of its plugins.
PYTEST = ("pytest", "_pytest", "pluggy", "xdist")


def short(module: str) -> str:
    """A module's name in the tree: ``xenhil.harness.x`` is ``harness.x``."""
    return module.removeprefix(NAMESPACE)


def ours(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PACKAGES)


def layer(module: str) -> str:
    """The node of the package graph a module (short name) belongs to: the
    plugin, the fixtures, or the rest of harness."""
    if module == PLUGIN:
        return "plugin"
    return module.split(".")[0]


def loaded_plugins(path: Path) -> list[str]:
    """The modules ``pytest_plugins`` names in a module's source."""
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                names += [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            elif isinstance(node.value, ast.Constant):
                names.append(node.value.value)
    return names


def module_edges(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """(module -> the xenhil modules it imports, the modules importing pytest),
    by short name."""
    import grimp
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    mine = {m for m in graph.modules if ours(m)}
    edges = {short(m): {short(i) for i in graph.find_modules_directly_imported_by(m) if i in mine}
             for m in mine}
    for module in mine:
        spec_path = root.joinpath(*module.split("."))
        path = spec_path / "__init__.py" if spec_path.is_dir() else spec_path.with_suffix(".py")
        for name in loaded_plugins(path):
            if ours(name):
                edges[short(module)].add(short(name))
    pytest_importers = {short(m) for m in mine
                        if {i.split(".")[0] for i in graph.find_modules_directly_imported_by(m)}
                        & set(PYTEST)}
    return edges, pytest_importers


def collapse(edges: dict[str, set[str]], node) -> dict[str, set[str]]:
    """The graph of ``node(module)``s: an edge where a module of one
    imports a module of another."""
    out: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            a, b = node(source), node(target)
            out.setdefault(a, set())
            if a != b:
                out[a].add(b)
    return out


def cycle_edges(graph: dict[str, set[str]]) -> list[str]:
    """Every edge "a -> b" on a cycle (b reaches a back), sorted."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    reached = {n: reach(n) for n in graph}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if a in reached.get(b, set()))


def chain(edges: dict[str, set[str]], source_layer: str, target_layer: str) -> list[str]:
    """Module imports from one layer into another, for a readable failure."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer(a) == source_layer and layer(b) == target_layer)


def report(root: Path) -> dict:
    edges, pytest_importers = module_edges(root)
    layers = collapse(edges, layer)
    cycles = cycle_edges(layers)
    return {
        "layers": {k: sorted(v) for k, v in sorted(layers.items())},
        "layer_cycles": cycles,
        "layer_cycle_imports": {c: chain(edges, *c.split(" -> ")) for c in cycles},
        "harness_pytest_importers": sorted(m for m in pytest_importers
                                           if layer(m) == "harness"),
    }


if __name__ == "__main__":
    print(json.dumps(report(Path(sys.argv[1]).resolve()), indent=1))
