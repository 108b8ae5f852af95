"""The project's import graph: no cycle among project modules, and the worker never reaches into the HTTP
layer (DESIGN §2: ``worker`` imports ``models`` and the non-HTTP parts of ``backend``).

The graph is read from the source with ``ast`` (nothing is imported): every ``import x`` / ``from x import
y`` in ``backend/``, ``worker/`` and ``models/`` that names a project module is an edge, ``from x import
y`` counting as an edge to ``x.y`` when ``y`` is a submodule and to ``x`` otherwise; relative imports are
resolved against the importing module's package. Parent packages that Python initialises on the way
(``backend/__init__.py`` for ``backend.config``) are not edges.

- **Cycles** are looked for among *module-level* imports only (including those under ``if`` / ``try`` /
  ``with`` / ``class`` blocks at module level): an import inside a function runs when the function is
  called, after every module has loaded, and is the sanctioned way to keep a heavy or upward dependency
  lazy. Imports under ``if TYPE_CHECKING:`` never run (annotations are strings here) and are not edges.
- **worker -> backend.api** is forbidden at *any* level, inside functions too: the worker sends tasks with
  ``backend.broker`` and calls services, never the HTTP layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "worker", "models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run at import time: the module body and, recursively, the bodies of its if / try /
    with / class blocks (class bodies run at import time); function bodies are left out."""
    out: list[ast.stmt] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, []) or []:
                if isinstance(child, ast.ExceptHandler):
                    todo.extend(child.body)
                elif isinstance(child, ast.stmt):
                    todo.append(child)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> set[str]:
    """Project modules one import statement loads."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:  # `import a.b.c` loads a.b.c (and its parents)
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
        return found
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] not in PACKAGES:
        return found
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            found.add(sub)
        elif base in modules:
            found.add(base)
    return found


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = _module_level(tree) if module_level_only else list(ast.walk(tree))
        edges: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(node, name, path.name == "__init__.py", modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component (breadth-first back to its start)."""
    start = min(comp)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)  # pragma: no cover - a component always holds a cycle


def test_graph_sees_the_project() -> None:
    graph = import_graph(module_level_only=True)
    assert {"backend.main", "worker.app", "models.runtime"} <= graph.keys()
    assert "backend.config" in graph["backend.broker"]
    # `from models.data import readers` is an edge to the submodule, not only to the package
    assert _targets(ast.parse("from models.data import readers").body[0], "x", False,  # type: ignore[arg-type]
                    project_modules()) == {"models.data.readers"}


def test_find_cycles_reports_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_project_modules() -> None:
    cycles = find_cycles(import_graph(module_level_only=True))
    assert cycles == [], "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_worker_never_imports_the_http_layer() -> None:
    graph = import_graph(module_level_only=False)
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "worker"
                 for t in targets if t == "backend.api" or t.startswith("backend.api."))
    assert bad == [], f"worker modules import backend.api: {bad}"
