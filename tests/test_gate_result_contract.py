"""The gate's result is read typed (bench/gate/result.py), and its JSON stays what every bench reads.

1. No module of bench/ or benchmarks/ reads a gate result by string key: a comparison's status, ratio or interval,
   the result's comparisons, verdict or exit code are attributes of `GateResult` and `Comparison` (mypy checks
   them), never `x["status"]`, `x.get("ratio")` or `"verdict" in x` on a dict made of one. The check flags such a
   read of any key in `GATE_KEYS` (the fields that name a gate result's content), and a comparison of an
   `exit_code` with a number (`ExitCode`, bench/errors.py, names them). It cannot tell a gate result's dict from
   another dict with such a key: the places where another dict has one ("status": a record's, a tile's) are
   listed in ALLOWED with what they read, and the test checks that each is still needed.
2. `compare --json` writes the format-1 fields with the same JSON types as before the result was typed (an older
   bench, whose models forbid unknown fields, reads it), and a file written before (no `format_version`) reads back
   typed, its verdict derived from its comparisons agreeing with its exit code.
"""
from __future__ import annotations

import ast
import json

import pytest

from bench.errors import ExitCode
from bench.gate.result import EXIT_CODES, GateResult, Status, Verdict, judge, read_result, write_result
from tests.conftest import ROOT

GATE_KEYS = {"status", "verdict", "exit_code", "comparisons", "ratio", "ci_low", "ci_high", "flagged", "confirmation",
             "confirmed", "again", "not_compared", "between_run_sigma", "p_value", "geomean_ratio", "baseline_run",
             "current_run", "only_in_baseline", "only_in_current", "ignored_machine_state"}
KEYED_METHODS = {"get", "pop", "setdefault"}
ALLOWED = {  # (file, function, key): what is read there, not a gate result
    ("bench/records/upgrade.py", "record_v1", "status"): "a format-1 record line's status (ok, failed, skipped)",
    ("bench/site/overview.py", "context", "status"): "an overview tile's shown status (page data), to count them",
}


def _key(node: ast.AST) -> str | None:
    """The constant string key `node` reads (`x["k"]`, `x.get("k")`, `"k" in x`), else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
        return node.slice.value if isinstance(node.slice.value, str) else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KEYED_METHODS \
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
            and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return node.left.value
    return None


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(map(_is_number, node.elts))
    return isinstance(node, ast.Constant) and type(node.value) is int


def _exit_code_against_a_number(node: ast.AST) -> bool:
    """`x.exit_code == 1`, `exit_code in (0, 4)`: an exit code compared with a bare number, not an ExitCode."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    named = any(isinstance(s, ast.Attribute) and s.attr == "exit_code" or isinstance(s, ast.Name) and
                s.id == "exit_code" for s in sides)
    return named and any(map(_is_number, sides))


def keyed_reads(source: str) -> list[tuple[int, str, str]]:
    """(line, innermost enclosing function or "", key) of every read `source` makes that the module docstring names;
    an exit code compared with a number has the key "exit_code == <number>"."""
    out: list[tuple[int, str, str]] = []

    def visit(scope: ast.AST, function: str) -> None:
        for node in ast.iter_child_nodes(scope):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node, node.name)
                continue
            key = _key(node)
            if key in GATE_KEYS:
                out.append((getattr(node, "lineno", 0), function, key))
            if _exit_code_against_a_number(node):
                out.append((getattr(node, "lineno", 0), function, "exit_code == <number>"))
            visit(node, function)

    visit(ast.parse(source), "")
    return sorted(set(out))


def _project_reads() -> dict[tuple[str, str, str], list[int]]:
    found: dict[tuple[str, str, str], list[int]] = {}
    for folder in ("bench", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for line, function, key in keyed_reads(path.read_text()):
                found.setdefault((relative, function, key), []).append(line)
    return found


def test_no_module_of_bench_or_benchmarks_reads_a_gate_result_by_key():
    found = _project_reads()
    unexpected = sorted(f"{path}:{lines} ({function or 'module level'}): {key}"
                        for (path, function, key), lines in found.items() if (path, function, key) not in ALLOWED)
    assert not unexpected, "a gate result read by key (or an exit code compared with a number): read the typed " \
                           f"GateResult / Comparison (bench/gate/result.py) and ExitCode instead: {unexpected}"
    assert set(found) == set(ALLOWED)  # each exception is still needed (else remove it)


FLAGGED = {
    "a status": "def f(c):\n    return c['status']",
    "a status, got": "def f(c):\n    return c.get('status', 'unchanged')",
    "the comparisons": "def f(result):\n    return len(result['comparisons'])",
    "an interval": "def f(v):\n    return v.get('ci_low') is not None",
    "the pair's run": "def f(v):\n    return v['baseline_run']",
    "the verdict, by membership": "def f(result):\n    return 'verdict' in result",
    "an exit code against 1": "def f(result):\n    return result.exit_code == 1",
    "an exit code in numbers": "def f(exit_code):\n    return exit_code in (0, 4)",
}
ALLOWED_SNIPPETS = {
    "attributes": "def f(result):\n    return [c.status for c in result.comparisons if c.ratio is not None]",
    "a dict built with the keys": "def f(c):\n    return {'status': c.status, 'ratio': c.ratio}",
    "a key written": "def f(row, c):\n    row['status'] = c.status",
    "another key": "def f(row):\n    return row['variant'], row.get('value')",
    "an exit code named": "def f(result):\n    return result.exit_code == ExitCode.REGRESSION",
    "a process's return code": "def f(proc):\n    return proc.returncode == 0",
}


@pytest.mark.parametrize("name", FLAGGED)
def test_the_check_flags_each_kind_of_keyed_read(name):
    source = FLAGGED[name]
    assert [line for line, _, _ in keyed_reads(source)] == [len(source.splitlines())], name


@pytest.mark.parametrize("name", ALLOWED_SNIPPETS)
def test_the_check_leaves_typed_reads_and_other_dicts_alone(name):
    assert keyed_reads(ALLOWED_SNIPPETS[name]) == []


def test_the_check_names_the_innermost_function():
    source = "def outer(x):\n    def inner(c):\n        return c['ratio']\n    return x['status']\n"
    assert keyed_reads(source) == [(3, "inner", "ratio"), (4, "outer", "status")]


# ---------------------------------------------------------------- the JSON every bench reads

FORMAT_1 = {  # the fields of a format-1 comparison file and their JSON types, as written before the typing
    "format_version": int, "baseline": dict, "current": dict, "rule": dict, "exit_code": int, "verdict": str,
    "comparisons": list, "flagged": list, "summary": dict, "not_compared": list, "failed": list, "skipped": list,
    "only_in_baseline": list, "only_in_current": list, "within": bool, "confirmation": list,
    "ignored_machine_state": bool,
    "environment_changes": list, "operator_diffs": list}  # additive within format 1 (bench/gate/result.py)
COMPARISON_1 = {"case", "variant", "metric", "unit", "better", "method", "baseline", "current", "ratio", "ci_low",
                "ci_high", "p_value", "n_baseline", "n_current", "threshold", "status", "note", "between_run_sigma",
                "machine"}


@pytest.fixture(scope="module")
def fixture_result() -> GateResult:
    """The v1 fixture run compared with itself (its broken case failed: exit 3)."""
    from bench.gate.compare import compare_runs, rule_from
    from bench.records.rundir import load_run

    run = load_run(ROOT / "tests" / "data" / "runs" / "v1-fixture")
    return compare_runs(run, run, rule_from(run))


def test_the_written_json_keeps_the_format_1_fields_and_types(fixture_result):
    written = json.loads(write_result(fixture_result))
    assert {k: type(v) for k, v in written.items()} == FORMAT_1
    assert written["verdict"] == fixture_result.verdict_text and written["exit_code"] == 3
    assert written["comparisons"] and all(set(c) == COMPARISON_1 for c in written["comparisons"])
    assert {type(c["status"]) for c in written["comparisons"]} == {str}
    assert {c["status"] for c in written["comparisons"]} <= {s.value for s in Status}
    assert "Status." not in write_result(fixture_result) and "ExitCode" not in write_result(fixture_result)


def test_a_file_written_before_reads_back_typed(fixture_result, tmp_path):
    old = json.loads(write_result(fixture_result))
    del old["format_version"]  # files written before the format version have the same fields
    old["comparisons"][0]["status"] = "regression"  # as an older bench wrote it: plain strings and numbers
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = read_result(tmp_path / "old.json", "--confirming")
    assert result.format_version == 1 and result.verdict_text == old["verdict"]
    assert result.comparisons[0].status is Status.REGRESSION and result.exit_code is ExitCode.CASE_FAILED
    assert result.verdict is Verdict.FAILED_CASES  # a failed case comes first, whatever the comparisons say
    assert json.loads(write_result(result)) == {**old, "format_version": 1}  # written again: the same file


@pytest.mark.parametrize(("statuses", "failed", "verdict", "exit_code"), [
    ([Status.UNCHANGED, Status.REGRESSION, Status.INCONCLUSIVE], True, Verdict.FAILED_CASES, ExitCode.CASE_FAILED),
    ([Status.NOT_GATED], False, Verdict.NO_DATA, ExitCode.CASE_FAILED),
    ([], False, Verdict.NO_DATA, ExitCode.CASE_FAILED),
    ([Status.INCONCLUSIVE, Status.REGRESSION, Status.NOT_GATED], False, Verdict.REGRESSION, ExitCode.REGRESSION),
    ([Status.UNCHANGED, Status.INCONCLUSIVE], False, Verdict.INCONCLUSIVE, ExitCode.INCONCLUSIVE),
    ([Status.UNCHANGED, Status.IMPROVEMENT, Status.NOT_GATED], False, Verdict.NO_REGRESSION, ExitCode.OK),
])
def test_the_verdict_and_its_exit_code(fixture_result, statuses, failed, verdict, exit_code):
    template = fixture_result.comparisons[0]
    comparisons = [template.model_copy(update={"status": s}) for s in statuses]
    assert judge(comparisons, fixture_result.failed if failed else []) is verdict and EXIT_CODES[verdict] == exit_code
