"""The layers import downward only (docs/architecture.md). The import graph is read from the code itself (AST:
top-level, lazy and TYPE_CHECKING imports alike); an import of a higher layer, or a cycle between packages or
between modules (TYPE_CHECKING-only edges aside), fails here with the file and line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src" / "kdzoo"
# Bottom to top; a package may import its own layer's modules and any lower layer's.
LAYERS = [
    ("errors", "registry", "version", "plugins"),
    ("config",),
    ("core",),
    ("models",),
    ("data",),
    ("distillers",),
    ("checkpoints",),
    ("program",),
    ("regimes",),
    ("engine",),
    ("linear_eval", "demo", "bench", "sweep", "api"),
    ("cli", "cli_examples", "kdzoo"),  # "kdzoo": the package's __init__, the public API
]
LAYER = {package: i for i, names in enumerate(LAYERS) for package in names}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_edges(root: Path) -> list[tuple[str, str, str, bool]]:
    """(importing module, imported module, "file:line", only under TYPE_CHECKING) for every kdzoo import."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_lines(tree)
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] == root.name and target != name:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    edges.append((name, target, where, node.lineno in typing_only))
    return edges


def upward_edges(root: Path) -> list[str]:
    found = []
    for source, target, where, _ in import_edges(root):
        a, b = package_of(source), package_of(target)
        if a not in LAYER or b not in LAYER:
            found.append(f"{where}: package {a if a not in LAYER else b} has no layer in tests/test_layers.py")
        elif LAYER[b] > LAYER[a]:
            found.append(f"{where}: {source} (layer {LAYER[a]}) imports {target} (layer {LAYER[b]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def graphs(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(package graph, module graph without TYPE_CHECKING-only edges)."""
    packages: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for source, target, _, typing_only in import_edges(root):
        if package_of(source) != package_of(target):
            packages.setdefault(package_of(source), set()).add(package_of(target))
        if not typing_only:
            modules.setdefault(source, set()).add(target)
    return packages, modules


def test_every_import_goes_down_the_layers():
    assert upward_edges(SRC) == []


def test_no_package_and_no_module_cycles():
    packages, modules = graphs(SRC)
    assert cycles(packages) == []
    assert cycles(modules) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    """The checker itself: a copy of the tree where core imports the engine (lazily, inside a function) fails."""
    import shutil

    root = tmp_path / "kdzoo"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    planted = root / "core" / "batch.py"
    planted.write_text(planted.read_text() + "\n\ndef _late():\n    from kdzoo.engine.trainer import Engine\n")
    found = upward_edges(root)
    assert len(found) == 1 and "kdzoo/core/batch.py" in found[0] and "kdzoo.engine.trainer" in found[0]
    packages, _ = graphs(root)
    assert ["core", "engine"] == sorted({"core", "engine"} & set(next(c for c in cycles(packages) if "core" in c)))


@pytest.mark.parametrize("package", sorted({p.parent.name for p in SRC.rglob("__init__.py")} - {"kdzoo"}))
def test_every_package_has_a_layer(package):
    assert package in LAYER
