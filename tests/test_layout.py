"""The layout keeps its promises: no import cycles among the project's modules (imports inside
functions count, and a name imported from a package counts as an import of its
``__init__``, which is how a submodule importing from its own package's front closes a
cycle), only
``pretrain/engine/`` imports DeepSpeed, imports of the project itself are at module level,
and no module shadows a standard-library module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "pretrain")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) of every import in ``path``."""
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".")[: len(name.split(".")) - child.level + is_pkg]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in child.names] or [base]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    out.append((t, child.lineno, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return out


def test_no_import_cycles():
    mods = modules()
    graph = {m: {t for t, _, _ in imports(m, p, mods)} for m, p in mods.items()}
    cycles, state = [], {}

    def dfs(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(path[path.index(w) :] + [w])
            elif w not in state:
                dfs(w, [*path, w])
        state[v] = 2

    sys.setrecursionlimit(10000)
    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def unit(module: str) -> str:
    """The package a module belongs to (``pretrain.train.loop`` -> ``pretrain.train``), or the
    module itself when it sits directly in ``data_pipeline/`` or ``pretrain/``."""
    parts = module.split(".")
    path = REPO.joinpath(*parts[:2])
    return ".".join(parts[:2]) if len(parts) > 1 and path.is_dir() else module


def test_packages_form_a_layered_graph():
    """No cycle among the packages either: importing any module runs its package's
    ``__init__`` first, so a cycle between two packages is an import-order trap even when
    no two modules import each other."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        graph.setdefault(unit(m), set()).update(
            unit(t) for t, _, _ in imports(m, p, mods) if unit(t) != unit(m)
        )
    order, state, cycles = [], {}, []

    def dfs(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                cycles.append(path[path.index(w) :] + [w])
            elif w not in state:
                dfs(w, [*path, w])
        state[v] = 2
        order.append(v)

    for v in sorted(graph):
        if v not in state:
            dfs(v, [v])
    assert not cycles, "package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
    assert graph["data_pipeline.common"] == set(), "common/ must depend on nothing"
    assert not any(
        u.startswith("pretrain")
        for m in mods
        if m.startswith("data_pipeline")
        for u in graph.get(unit(m), ())
    ), "data_pipeline must not import pretrain"


def test_project_imports_are_at_module_level():
    mods = modules()
    inner = sorted(
        {
            f"{p.relative_to(REPO)}:{line} imports {t}"
            for m, p in mods.items()
            for t, line, in_function in imports(m, p, mods)
            if in_function
        }
    )
    assert not inner, "imports of the project inside functions:\n" + "\n".join(inner)


def test_only_the_engine_package_imports_deepspeed():
    users = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] == "deepspeed" for n in names):
                users.append(m)
    assert users and all(m.startswith("pretrain.engine") for m in users), sorted(set(users))


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    clash = [m for m in modules() if m.rsplit(".", 1)[-1] in stdlib]
    assert not clash, clash
