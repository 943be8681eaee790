"""The architecture's rules, read from the source: who may import whom, and no import cycles.

- The layers written in ARCHITECTURE.md ("## Layers"): a folder imports only from its own layer and those
  below it, so no two folders import each other (one documented exception).
- `bench.core` imports nothing else of bench and nothing of backends: it is the stable base.
- `backends` imports only `backends` and `bench.core` (plus third-party packages).
- No cycle among modules, counting every import, top-level or inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("bench", "backends")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported by a module (resolved to the longest known module name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _is_package_init(name: str, graph: dict) -> bool:
    return any(other.startswith(name + ".") for other in graph)


UPWARD_BY_EXCEPTION: set[tuple[str, str]] = set()  # an import against the layers, by exception (none now)


def _layers() -> list[list[str]]:
    """ARCHITECTURE.md's layers, bottom first: folders as 'bench.run.' (a prefix), modules as 'bench.errors'."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    names = [[entry.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for entry in line.split()]
             for line in block.splitlines() if line.strip()]
    return names[::-1]


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching entry, layer)
    for index, entries in enumerate(layers):
        for entry in entries:
            folder = entry.endswith(".")
            if (module == entry.rstrip(".") or (folder and module.startswith(entry))) and (
                    best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def test_every_folder_imports_only_its_layer_and_those_below():
    layers = _layers()
    graph = _graph()
    unplaced = sorted(m for m in graph if _layer_of(m, layers) is None)
    assert not unplaced, f"modules in no layer of ARCHITECTURE.md: {unplaced}"
    upward = sorted(f"{m} -> {i}" for m, imports in graph.items() for i in imports
                    if (m, i) not in UPWARD_BY_EXCEPTION and _layer_of(i, layers) > _layer_of(m, layers))
    assert not upward, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(upward)
    for module, imported in UPWARD_BY_EXCEPTION:
        assert imported in graph[module], f"the exception {module} -> {imported} is gone: remove it here and there"


def test_the_layers_are_read_as_written():
    layers = _layers()
    assert _layer_of("bench.nowhere.module", layers) is None  # a new folder must be placed
    assert _layer_of("bench.run.worker", layers) > _layer_of("bench.exec.protocol", layers)
    assert _layer_of("bench.serving.run", layers) < _layer_of("bench.run.worker", layers)
    assert _layer_of("bench.metrics", layers) == _layer_of("bench.core.timing", layers) == 0


def test_core_depends_on_nothing_else_in_the_project():
    for name, imports in _graph().items():
        if name.startswith("bench.core"):
            outside = {i for i in imports if not i.startswith("bench.core") and i != "bench"}
            assert not outside, f"{name} imports {outside}: bench.core must stay independent"


def test_backends_depend_only_on_backends_and_bench_core():
    for name, imports in _graph().items():
        if name.startswith("backends"):
            outside = {i for i in imports if not i.startswith(("backends", "bench.core")) and i != "bench"}
            assert not outside, f"{name} imports {outside}: backends may use bench.core only"


def test_there_is_no_import_cycle():
    graph = _graph()
    # A package's __init__ importing its own submodules (re-exports) is not a cycle between parts.
    edges = {m: {i for i in deps if not (i.startswith(m + ".") and _is_package_init(m, graph))}
             for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_says_what_it_is_for():
    missing = [name for name, path in _modules().items() if ast.get_docstring(ast.parse(path.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"
