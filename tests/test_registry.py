"""The one registry mechanism (bench/core/registry.py): objects and lazy import paths, one error for unknown names,
and the registries built on it (backends, tasks, built-in models, server kinds)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench.core.registry import Registry, UnknownName
from tests.conftest import ROOT

LAZY_MODULE = '''"""A module a registry names but has not imported."""


class Widget:
    pass


def make():
    return Widget()
'''


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """The name of a fresh importable module, not imported yet."""
    name = f"lazy_widgets_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_the_registry_refuses_a_name_twice_and_lists_the_valid_ones():
    registry: Registry[int] = Registry("widget")
    registry.add("b", 2)
    registry.add("a", 1)
    assert list(registry) == ["b", "a"] and "a" in registry and registry["a"] == 1 and len(registry) == 2
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        registry.add("a", 3)
    with pytest.raises(UnknownName) as error:
        registry["c"]
    assert str(error.value) == "unknown widget 'c'; valid names: a, b"
    assert registry.remove("a") == 1 and "a" not in registry


def test_a_lazy_entry_is_imported_on_first_use_only(lazy_module):
    registry: Registry[type] = Registry("widget", {"w": f"{lazy_module}:Widget"})
    assert list(registry) == ["w"] and "w" in registry and registry.path("w") == f"{lazy_module}:Widget"
    assert lazy_module not in sys.modules  # listing, and the path another process imports, import nothing
    widget = registry["w"]
    assert lazy_module in sys.modules and widget.__name__ == "Widget" and registry["w"] is widget
    assert registry.items() == [("w", widget)] and registry.path("w") == f"{lazy_module}:Widget"


def test_an_object_and_its_import_path_are_one_registration(lazy_module):
    registry: Registry[object] = Registry("task", {"make": f"{lazy_module}:make"})
    module = __import__(lazy_module)
    registry.add("make", module.make)  # the module registering itself after the runner registered its path
    registry.add("make", f"{lazy_module}:make")
    assert registry["make"] is module.make
    with pytest.raises(ValueError, match="task 'make' is registered twice"):
        registry.add("make", f"{lazy_module}:Widget")
    other: Registry[object] = Registry("task")
    other.add("make", module.make)
    assert other.path("make") == f"{lazy_module}:make"  # the path of an object registered as itself


def test_an_entry_that_cannot_be_imported_is_the_registrys_error(lazy_module):
    class UnknownWidget(UnknownName):
        pass

    registry: Registry[object] = Registry("widget", {"gone": "no_such_module_here:Widget",
                                                     "typo": f"{lazy_module}:Widgte"},
                                          error=UnknownWidget, listing="registered")
    with pytest.raises(UnknownWidget, match="widget 'gone' -> no_such_module_here:Widget cannot be imported: "
                                            "No module named 'no_such_module_here'"):
        registry["gone"]
    with pytest.raises(UnknownWidget, match=f"widget 'typo' -> {lazy_module}:Widgte cannot be imported: .*Widgte"):
        registry["typo"]
    with pytest.raises(UnknownWidget, match="^unknown widget 'nope'; registered: gone, typo$"):
        registry["nope"]
    with pytest.raises(UnknownWidget, match="unknown widget 'pkg:Cls'"):  # an import path only with paths=True
        registry["pkg:Cls"]


def test_with_paths_any_import_path_names_an_entry_unregistered(lazy_module):
    registry: Registry[type] = Registry("widget", paths=True)
    assert registry[f"{lazy_module}:Widget"].__name__ == "Widget" and list(registry) == []
    with pytest.raises(UnknownName, match="widget 'a:b:c' -> a:b:c cannot be imported: .*not an import path"):
        registry["a:b:c"]


def test_backends_keep_their_errors_and_a_suite_may_name_an_import_path():
    from backends import REGISTRY, UnknownBackend, backend_class

    assert backend_class("tests.known_answer_backend:KnownAnswerBackend").name == "known-answer"
    with pytest.raises(UnknownBackend, match=f"^unknown backend 'nope'; registered: {', '.join(sorted(REGISTRY))}$"):
        backend_class("nope")
    with pytest.raises(UnknownBackend, match="backend 'json:dumps' -> json:dumps is not a backend"):
        backend_class("json:dumps")
    with pytest.raises(UnknownBackend, match="backend 'tests.nowhere:X' -> tests.nowhere:X cannot be imported"):
        backend_class("tests.nowhere:X")
    assert isinstance(UnknownBackend("x"), KeyError)


def test_listing_the_backends_imports_none_of_them():
    code = ("import sys, backends\nnames = sorted(backends.REGISTRY)\n"
            "print(len(names), sorted(m for m in sys.modules if m.startswith('backends.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1) == ["7", "[]\n"]


def test_the_tasks_are_registered_by_the_modules_that_run_them():
    """bench/exec/tasks.py names no task module: the runner's side registers its worker's tasks, the serving task
    registers itself when the program's top imports it."""
    from bench.exec.tasks import TASKS, task_function
    from bench.run import spawn  # noqa: F401 - registers latency and perplexity
    from bench.serving import run as serving

    assert TASKS.path("latency") == TASKS.path("perplexity") == "bench.run.worker:run_backend_case"
    assert TASKS.path("serving") == "bench.serving.run:run_serving_case"
    assert task_function(TASKS.path("serving")) is serving.run_serving_case
    with pytest.raises(UnknownName, match="unknown task 'nope'; registered .*: latency, perplexity, serving"):
        TASKS.path("nope")


def test_server_kinds_are_a_registry():
    from bench.serving.launch.servers import SERVERS, Stub, server_class

    assert server_class("stub") is Stub and "vllm-server" in SERVERS
    with pytest.raises(UnknownName, match="unknown server 'nope'; registered: endpoint, llama-cpp-server, stub"):
        server_class("nope")


def test_a_ray_unit_carries_its_tasks_import_paths_to_the_nodes_process(tmp_path):
    """The node's process (bench/run/cluster/unit_process.py) imports no serving code, yet knows the serving task's
    function from the unit the driver sent."""
    from bench.run.cluster.unit_process import unit_json
    from bench.run.plan import Unit
    from bench.serving import run  # noqa: F401 - the driver's top registers the serving task
    from bench.suite import load_suite

    _, cases = load_suite(ROOT / "suites" / "serving.yaml")
    (tmp_path / "unit.json").write_text(unit_json(Unit("single", (cases[0],))))
    code = ("import sys\nfrom pathlib import Path\nfrom bench.exec.tasks import TASKS\n"
            "from bench.run.cluster.unit_process import read_unit\n"
            "unit = read_unit(Path(sys.argv[1]).read_text())\n"
            "print(unit.cases[0].task, TASKS.path('serving'), TASKS.path('latency'), 'bench.serving' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "unit.json")], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["serving", "bench.serving.run:run_serving_case", "bench.run.worker:run_backend_case",
                           "False"]
