"""The architecture's rules, read from the source: who may import whom, and no import cycles.

- The layers written in ARCHITECTURE.md ("## Layers"): a folder imports only from its own layer and those
  below it, so no two folders import each other (one documented exception). Every edge counts: import
  statements, and modules named in strings (a registry's lazy entry "module:attr", `import_module("m")`,
  `"-m", "m"` in a command): a lower layer that names an upper module fails as an upward import does.
- `bench.core` imports nothing else of bench and nothing of backends: it is the stable base.
- `backends` imports only `backends` and `bench.core` (plus third-party packages).
- No cycle among modules, counting every import statement, top-level or inside a function (a module named in
  a string is imported late, or in another process: it cannot close an import cycle).
"""
from __future__ import annotations

import ast
import itertools
import re
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


IMPORT_PATH = re.compile(r"([A-Za-z_][\w.]*):[A-Za-z_][\w.]*")  # "package.module:attr" (bench/core/registry.py)
IMPORTERS = {"import_module", "__import__"}  # importlib.import_module("m"), __import__("m")


def _named_in_strings(tree: ast.AST) -> list[str]:
    """Modules a source names in strings: import paths "module:attr", the literal argument of import_module /
    __import__, and the module after "-m" in a list or tuple (a command that runs it)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = IMPORT_PATH.fullmatch(node.value)
            if match:
                found.append(match.group(1))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if function in IMPORTERS and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            found += [module for flag, module in itertools.pairwise(items) if flag == "-m" and isinstance(module, str)]
    return found


def _imports(path: Path, name: str, known: set[str], strings: bool = True) -> set[str]:
    """Project modules a module imports (resolved to the longest known module name): by import statements, and with
    `strings` the modules it names in strings (`_named_in_strings`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    targets: list[str] = _named_in_strings(tree) if strings else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            targets += [f"{base}.{alias.name}" for alias in node.names] + [base]
    found: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                if candidate != name:
                    found.add(candidate)
                break
    return found


def _graph(strings: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known, strings) for name, path in modules.items()}


def _is_package_init(name: str, graph: dict) -> bool:
    return any(other.startswith(name + ".") for other in graph)


# edges against the layers, by exception (each said in ARCHITECTURE.md): the GPTQ/AWQ checkpoint maker runs
# `python -m bench.models.calibration` as a tool, in a process of its own, for bench's calibration set
UPWARD_BY_EXCEPTION: set[tuple[str, str]] = {("backends.llmcompressor.checkpoint", "bench.models.calibration")}


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


def _upward(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """The edges of `graph` that go up ARCHITECTURE.md's layers (less the documented exceptions)."""
    return sorted(f"{m} -> {i}" for m, imports in graph.items() for i in imports
                  if (m, i) not in UPWARD_BY_EXCEPTION and _layer_of(i, layers) > _layer_of(m, layers))


def test_every_folder_imports_only_its_layer_and_those_below():
    layers = _layers()
    graph = _graph()
    unplaced = sorted(m for m in graph if _layer_of(m, layers) is None)
    assert not unplaced, f"modules in no layer of ARCHITECTURE.md: {unplaced}"
    upward = _upward(graph, layers)
    assert not upward, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(upward)
    for module, imported in UPWARD_BY_EXCEPTION:
        assert imported in graph[module], f"the exception {module} -> {imported} is gone: remove it here and there"


def test_the_layers_are_read_as_written():
    layers = _layers()
    assert _layer_of("bench.nowhere.module", layers) is None  # a new folder must be placed
    assert _layer_of("bench.run.worker", layers) > _layer_of("bench.exec.protocol", layers)
    assert _layer_of("bench.serving.run", layers) < _layer_of("bench.run.worker", layers)
    assert _layer_of("bench.metrics", layers) == _layer_of("bench.core.timing", layers) == 0


UPWARD_STRINGS = """
TASKS = {"serving": "bench.serving.run:run_serving_case"}
REGISTRY.add("report", "bench.report.tables:Table")


def start(python):
    importlib.import_module("bench.cli.tools")
    __import__("bench.gate.rule")
    return [python, "-m", "bench.run.worker", "case.json"]
"""


def test_the_layer_check_sees_modules_named_in_strings(tmp_path):
    """A lower layer naming upper modules in strings (a registry's lazy entry, import_module, `-m`) fails the check
    as an import statement would; the same strings in an upper layer pass."""
    layers = _layers()
    known = set(_modules())
    (tmp_path / "tasks.py").write_text(UPWARD_STRINGS)
    named = _imports(tmp_path / "tasks.py", "bench.exec.tasks", known)
    assert named == {"bench.serving.run", "bench.report.tables", "bench.cli.tools", "bench.gate.rule",
                     "bench.run.worker"}
    assert _upward({"bench.exec.tasks": named}, layers) == [f"bench.exec.tasks -> {m}" for m in sorted(named)]
    assert _imports(tmp_path / "tasks.py", "bench.exec.tasks", known, strings=False) == set()
    assert _upward({"bench.cli.fake": named - {"bench.cli.tools"}}, layers) == []


def test_the_registries_edges_are_read_from_the_tree():
    """The lazy entries of the real registries are edges of the graph the layer test checks: the backends'
    import paths, the runner's own task, the worker started by name."""
    graph = _graph()
    assert {"backends.hf.eager", "backends.gguf.llama_cpp", "backends.vllm.engine"} <= graph["backends"]
    assert "bench.run.worker" in graph["bench.run.spawn"] and "bench.run.worker" not in _graph(False)["bench.run.spawn"]
    assert not {m for m in graph["bench.exec.tasks"] if m.startswith(("bench.run", "bench.serving"))}


def test_core_depends_on_nothing_else_in_the_project():
    for name, imports in _graph().items():
        if name.startswith("bench.core"):
            outside = {i for i in imports if not i.startswith("bench.core") and i != "bench"}
            assert not outside, f"{name} imports {outside}: bench.core must stay independent"


def test_backends_depend_only_on_backends_and_bench_core():
    for name, imports in _graph().items():
        if name.startswith("backends"):
            outside = {i for i in imports if not i.startswith(("backends", "bench.core")) and i != "bench"
                       and (name, i) not in UPWARD_BY_EXCEPTION}
            assert not outside, f"{name} imports {outside}: backends may use bench.core only"


def test_there_is_no_import_cycle():
    graph = _graph(strings=False)
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
