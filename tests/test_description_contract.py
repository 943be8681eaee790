"""`BackendDescription.details` is free-form: no module of bench reads or writes a key of it.

What bench needs from a backend is a typed field (bench/core/description.py); `details` is shown as is.
The check reads every module under bench/ and flags a key access of a `details` dict:
- `X.details[...]` (read, write or del), `X.details.get / pop / setdefault / update (...)`, `key in X.details`;
- the same on `X["details"]` or `X.get("details")`;
- the same on a name bound from any of these in the same function (`rest = dict(x.details)`, `d = x.details or {}`).
Handing the whole dict on or iterating it (`.items()`, `.keys()`, `.values()`: showing it) is not a key access.
It cannot tell a backend description's `details` from another object's (a server launch's): no module reads
either by key today, and one that does should get a typed field too.

The one exception: bench/records/upgrade.py's `typed_description`, which moves what records written before
the typed fields kept in `details` into those fields; the test checks that it still needs the exception.
"""
from __future__ import annotations

import ast
import textwrap

import pytest

from tests.conftest import ROOT

KEYED_METHODS = {"get", "pop", "setdefault", "update", "__getitem__", "__setitem__", "__delitem__", "__contains__"}
WRAPPERS = {"dict", "copy", "deepcopy"}  # `dict(x.details)` is still that dict's keys
ALLOWED = {("bench/records/upgrade.py", "typed_description")}  # reads what older records kept in details


def _is_details(node: ast.AST, aliases: set[str]) -> bool:
    """Whether `node` evaluates to a `details` dict (or a copy of one)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "details"
    if isinstance(node, ast.Name):
        return node.id in aliases
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "details"
    if isinstance(node, ast.BoolOp):  # x.details or {}
        return _is_details(node.values[0], aliases)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and node.args:  # x.get("details")
            first = node.args[0]
            return isinstance(first, ast.Constant) and first.value == "details"
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in WRAPPERS and len(node.args) == 1 and _is_details(node.args[0], aliases)
    return False


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _own_nodes(scope: ast.AST) -> tuple[list[ast.AST], list[ast.AST]]:
    """(the nodes of `scope` outside nested functions, the nested functions directly inside it)."""
    own: list[ast.AST] = []
    nested: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, FUNCTIONS):
            nested.append(node)
            continue
        own.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return own, nested


def _bound(node: ast.AST) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) pairs an assignment binds, tuples unpacked pairwise (`a, b = x, y.details`)."""
    if isinstance(node, ast.Assign):
        pairs = [(target, node.value) for target in node.targets]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        pairs = [(node.target, node.value)]
    else:
        return []
    out: list[tuple[ast.AST, ast.AST]] = []
    for target, value in pairs:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            out += list(zip(target.elts, value.elts))
        else:
            out.append((target, value))
    return out


def _aliases(nodes: list[ast.AST], inherited: set[str]) -> set[str]:
    """Names bound to a details dict among `nodes` (repeated until no new one appears), plus `inherited`."""
    found = set(inherited)
    while True:
        before = len(found)
        for node in nodes:
            for target, value in _bound(node):
                if isinstance(target, ast.Name) and _is_details(value, found):
                    found.add(target.id)
        if len(found) == before:
            return found


def _is_access(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Subscript):
        return _is_details(node.value, aliases)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and node.func.attr in KEYED_METHODS \
            and _is_details(node.func.value, aliases)
    if isinstance(node, ast.Compare):
        return any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
            and any(_is_details(c, aliases) for c in node.comparators)
    return False


def key_accesses(source: str) -> list[tuple[int, str]]:
    """(line, innermost enclosing function) of every key access of a details dict in `source` (module level: "")."""
    out: list[tuple[int, str]] = []

    def visit(scope: ast.AST, name: str, inherited: set[str]) -> None:
        own, nested = _own_nodes(scope)
        aliases = _aliases(own, inherited)
        out.extend((getattr(node, "lineno", 0), name) for node in own if _is_access(node, aliases))
        for function in nested:
            visit(function, getattr(function, "name", ""), aliases)

    visit(ast.parse(source), "", set())
    return sorted(set(out))


def _bench_accesses() -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for line, function in key_accesses(path.read_text()):
            out.setdefault((relative, function), []).append(line)
    return out


def test_no_module_of_bench_reads_or_writes_a_key_of_details():
    accesses = _bench_accesses()
    unexpected = {f"{path}:{lines} ({function or 'module level'})": lines
                  for (path, function), lines in accesses.items() if (path, function) not in ALLOWED}
    assert not unexpected, "a key of `details` is accessed; give what bench needs a typed field on " \
                           f"BackendDescription (bench/core/description.py) instead: {sorted(unexpected)}"
    assert set(accesses) == ALLOWED  # the exception is still needed (else remove it from ALLOWED)


FLAGGED = {
    "read": "def f(d):\n    return d.details['kv_cache']",
    "get": "def f(r):\n    return r.backend.details.get('attention') or {}",
    "write": "def f(d, v):\n    d.details['peak'] = v",
    "delete": "def f(d):\n    del d.details['x']",
    "membership": "def f(d):\n    return 'kv_cache' in d.details",
    "through a dict key": "def f(line):\n    return line['backend']['details']['kv_cache']",
    "through get('details')": "def f(b):\n    return b.get('details', {}).get('kv_cache')",
    "through an alias": "def f(d):\n    rest = dict(d.details or {})\n    return rest.pop('kv_cache', None)",
    "through an alias of an alias": "def f(d):\n    a = d.details\n    b = a\n    return b['x']",
}
ALLOWED_SNIPPETS = {
    "shown whole": "def f(info):\n    return '; '.join(f'{k}: {v}' for k, v in info.details.items())",
    "handed on": "def f(launch):\n    return {'details': launch.details}",
    "built": "def f():\n    return Info(details={'a': 1})",
    "another dict's key": "def f(d, details):\n    return d.kv_cache.kind, details",
    "a typed field": "def f(b):\n    return b.attention.verified if b.attention else None",
}


@pytest.mark.parametrize("name", FLAGGED)
def test_the_check_flags_each_kind_of_key_access(name):
    assert [line for line, _ in key_accesses(FLAGGED[name])] == [len(FLAGGED[name].splitlines())], name


@pytest.mark.parametrize("name", ALLOWED_SNIPPETS)
def test_the_check_leaves_showing_and_passing_details_alone(name):
    assert key_accesses(ALLOWED_SNIPPETS[name]) == []


def test_the_check_names_the_innermost_function():
    source = textwrap.dedent("""
        def outer(d):
            def inner():
                return d.details['x']
            return inner
    """)
    assert key_accesses(source) == [(4, "inner")]


def test_the_check_reads_the_real_upgrade_and_finds_its_reads():
    upgrade = (ROOT / "bench" / "records" / "upgrade.py").read_text()
    assert {function for _, function in key_accesses(upgrade)} == {"typed_description"}
