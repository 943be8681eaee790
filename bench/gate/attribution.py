"""Why a flagged case moved: what changed around its two runs and which of its operators moved.

`attribute` runs after the gate's verdicts (bench/gate/compare.py `compare_runs`): for every case with a regression
or an inconclusive verdict (`FLAGGED`) it diffs the two sides' environments (bench/gate/envdiff.py) and, where the
case was profiled, their operators (bench/gate/opdiff.py); the results are the GateResult's `environment_changes`
and `operator_diffs`. `tables` lays both out as tables of text (title, headers, rows, notes), which `markdown`
renders for the alert (bench/gate/alerts.py: "What changed between the runs", "Which operators moved") and the
dashboard's compare page shows as they are (bench/site/compare.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.core import markdown as md
from bench.gate import machine
from bench.gate.envdiff import EnvironmentChange, case_changes, merge
from bench.gate.opdiff import OperatorDiff, ProfileSide, diff
from bench.gate.result import FLAGGED, Comparison, GateResult
from bench.measure.profiling import CATEGORIES
from bench.records.rundir import Run

PACKAGE_ROWS = 30  # other packages listed in a table; the --json file has them all
ENVIRONMENT = "What changed between the runs"
OPERATORS = "Which operators moved"


def attribute(baseline: Run, current: Run, comparisons: list[Comparison]) -> dict:
    """GateResult's `environment_changes` and `operator_diffs` for the flagged comparisons (empty: none flagged)."""
    flagged: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.status in FLAGGED:
            flagged.setdefault(c.case.split("@")[0], []).append(c)
    base = {r.id: r for r in baseline.records}
    cur = {r.id: r for r in current.records}
    per_case, operators = [], []
    for case, rows in flagged.items():
        before, after = base[case], cur[case]
        states = machine.state_of(before), machine.state_of(after)
        # the gate's reasons where it applied them, else whether the states differ (--ignore-machine-state too)
        found = next((r.machine for r in rows if r.machine is not None), None) or machine.difference(*states)
        per_case.append(case_changes(case, before, after, baseline.meta.environment, current.meta.environment,
                                     found.reasons if found else None, (found.baseline, found.current) if found
                                     else states))
        operators.append(diff(case, before, after))
    return {"environment_changes": merge(per_case), "operator_diffs": operators}


@dataclass
class Table:
    """Rows of text under a title; `code`: the columns that hold names (a code span in Markdown)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    lead: str = ""  # a sentence before the table
    notes: list[str] = field(default_factory=list)  # after it
    code: list[int] = field(default_factory=list)
    level: int = 4  # its heading's level in Markdown (a case's table under its section: 5)


def _cases(cases: list[str], flagged: int) -> str:
    if len(cases) == flagged:
        return "all flagged" if flagged > 1 else cases[0]
    return ", ".join(cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")


def environment_table(changes: list[EnvironmentChange], flagged: int) -> Table | None:
    """The environment's changes, most relevant first; None when nothing recorded differs."""
    if not changes:
        return None
    package_rows = [i for i, c in enumerate(changes) if c.kind == "package"]
    shown = [c for i, c in enumerate(changes) if c.kind != "package" or i in package_rows[:PACKAGE_ROWS]]
    rows = [[c.kind + (f" ({', '.join(c.backends)})" if c.backends else ""), c.name, c.baseline or "(none)",
             c.current or "(none)", _cases(c.cases, flagged)] for c in shown]
    notes = [f"machine state, {_cases(c.cases, flagged)}: {c.note}" for c in changes if c.note]
    if len(package_rows) > PACKAGE_ROWS:
        notes.append(f"{len(package_rows) - PACKAGE_ROWS} more packages differ (the --json file lists them all)")
    return Table(ENVIRONMENT, ["kind", "what", "baseline", "current", "flagged case"], rows,
                 "Recorded differences between the two sides of the flagged cases, most relevant first: the case's "
                 "backend's own packages, hardware and driver, machine state, threads, model, what ran, other "
                 "packages, the rest (bench/gate/envdiff.py).", notes, code=[1])


def _ms(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else f"{x:+.4g}" if sign else f"{x:.4g}"


def _calls(before: float | None, after: float | None) -> str:
    return f"{_ms(before)} → {_ms(after)}" if before != after else _ms(after)


def _figures(b: ProfileSide, c: ProfileSide) -> list[list[str]]:
    """Before and after per profiled generation: the split, operators in all, outside them, wall time, phases."""
    rows = []

    def row(what: str, before: float | None, after: float | None, of: tuple[float | None, float | None] = (None, None)):
        def cell(x: float | None, total: float | None) -> str:
            return _ms(x) + (f" ({x / total * 100:.2g} %)" if x is not None and total else "")

        if before is None and after is None:
            return  # the profiler does not give it (llama.cpp: no operators; ONNX Runtime: no wall time)
        change = after - before if before is not None and after is not None else None
        rows.append([what, cell(before, of[0]), cell(after, of[1]), _ms(change, sign=True)])

    for name in CATEGORIES:
        row(name, (b.split_ms or {}).get(name), (c.split_ms or {}).get(name), (b.operators_ms, c.operators_ms))
    row("all operators", b.operators_ms, c.operators_ms)
    if b.wall_ms is not None or c.wall_ms is not None:
        row("outside operators (Python, loop, dispatch)", b.outside_operators_ms, c.outside_operators_ms,
            (b.wall_ms, c.wall_ms))
        row("traced wall time", b.wall_ms, c.wall_ms)
    for phase in dict.fromkeys([*b.phases_ms, *c.phases_ms]):
        row(f"phase: {phase}", b.phases_ms.get(phase), c.phases_ms.get(phase))
    return rows


def operator_tables(diffs: list[OperatorDiff]) -> list[Table]:
    """Under a heading: per case profiled on both sides, its operators by change and its before/after figures; then
    the cases profiled on one side only. Nothing when no flagged case was profiled on either side."""
    if all(d.profiled == "neither" for d in diffs):
        return []
    tables = [Table(OPERATORS, [], [], "Self time per profiled generation, before and after, the operators that "
                                       "changed most first; what each profiler allows: bench/gate/opdiff.py.")]
    for d in diffs:
        if d.profiled != "both":
            continue
        assert d.baseline is not None and d.current is not None
        what = f"self time on the {d.clock.upper()} in ms" if d.operators else "ms"
        lead = (f"{d.backend}: {d.current.profiler}, {what} per profiled generation ({d.current.scope}); "
                f"{d.baseline.generations} vs {d.current.generations} generations profiled")
        headers = ["operator", "kind", "baseline ms", "current ms", "change ms", "calls per generation"]
        tables.append(Table(d.case, headers if d.operators else [],
                            [[o.name, o.category, _ms(o.baseline_ms), _ms(o.current_ms), _ms(o.change_ms, True),
                              _calls(o.baseline_calls, o.current_calls)] for o in d.operators],
                            lead, d.notes, code=[0], level=5))
        tables.append(Table(f"{d.case}: before and after", ["ms per profiled generation", "baseline", "current",
                                                              "change"], _figures(d.baseline, d.current), level=5))
    one_side = [[d.case, d.profiled, "; ".join(d.notes)] for d in diffs if d.profiled != "both"]
    if one_side:
        tables.append(Table("Flagged cases without a profile on both sides (no operator diff)",
                            ["case", "profiled", "why"], one_side,
                            "Profile both runs' cases (python -m bench profile SUITE, or profile: in the suite) to "
                            "see which operators moved.", code=[0], level=5))
    return tables


def tables(result: GateResult) -> list[Table]:
    """Both parts as tables: the environment's changes, then the operators of each flagged case."""
    env = environment_table(result.environment_changes, len(result.flagged))
    return ([env] if env else []) + operator_tables(result.operator_diffs)


def site_tables(result: GateResult) -> list[dict]:
    """The tables as the dashboard's compare page shows them (plain text, put in the page as text)."""
    return [asdict(t) for t in tables(result)]


def markdown(result: GateResult) -> list[str]:
    """The alert's sections (lines); none when nothing recorded differs and no flagged case was profiled."""
    lines: list[str] = []
    for t in tables(result):
        lines += [f"{'#' * t.level} {md.text(t.title)}", ""] + ([md.text(t.lead), ""] if t.lead else [])
        if t.headers:
            lines += ["| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
            lines += ["| " + " | ".join(md.code(v) if i in t.code else md.text(v) for i, v in enumerate(row)) + " |"
                      for row in t.rows]
            lines.append("")
        if t.notes:
            lines += [*(f"- {md.text(note)}" for note in t.notes), ""]
    return lines
