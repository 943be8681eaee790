"""What `bench compare` tells people: a Markdown alert (GitHub issue body, $GITHUB_STEP_SUMMARY),
a short plain-text line, and a Slack-compatible webhook POST ({"text": ...}) with urllib.

The alert's tables are built in the reports' table model (bench/presentation/table.py: user text escaped) and its
numbers shown by `fmt` (bench/presentation/formatting.py).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from bench.core import markdown as md
from bench.errors import ExitCode
from bench.gate import attribution
from bench.gate.result import Comparison, Confirmation, GateResult, MetricSummary, Status
from bench.metrics import METRICS
from bench.presentation.formatting import NOT_AVAILABLE, fmt
from bench.presentation.table import Cell, Column, Table
from bench.presentation.table import markdown as table_markdown

WEBHOOK_ENV = "BENCH_WEBHOOK_URL"
ICON = {ExitCode.OK: "✅", ExitCode.REGRESSION: "🔴", ExitCode.CASE_FAILED: "⚠️", ExitCode.INCONCLUSIVE: "❔"}


def _pct(x: float | None) -> str:
    return NOT_AVAILABLE if x is None else f"{(x - 1) * 100:+.1f} %"


def _metric_link(name: str) -> Cell:
    unit = METRICS[name].unit if name in METRICS else ""
    return Cell(md.Markdown(md.code(name) + (f" ({md.text(unit)})" if unit else "")))


def _table(headers: list[str], rows: list[list[Cell]]) -> list[str]:
    """A Markdown table (bench/presentation/table.py), as lines."""
    return table_markdown(Table("", [Column(h) for h in headers], rows)).splitlines()


def _comparisons(rows: list[Comparison]) -> list[str]:
    def cells(c: Comparison) -> list[Cell]:
        ci = f" [{_pct(c.ci_low)}, {_pct(c.ci_high)}]" if c.ci_low is not None else ""
        return [Cell(md.code(c.case)), _metric_link(c.metric), Cell(fmt(c.baseline)), Cell(fmt(c.current)),
                Cell(f"{_pct(c.ratio)}{ci}"), Cell(c.method), Cell(f"{c.threshold * 100:g} %")]
    return _table(["case", "metric", "baseline", "current", "change [CI]", "method", "threshold"],
                  [cells(c) for c in rows])


def _confirmations(rows: list[Confirmation]) -> list[str]:
    return _table(["case", "metric", "first", "re-measured", "confirmed"],
                  [[Cell(md.code(c.case)), _metric_link(c.metric), Cell(c.first), Cell(c.again or "not measured"),
                    Cell("yes" if c.confirmed else "no")] for c in rows])


def _summary(summary: dict[str, MetricSummary]) -> list[str]:
    return _table(["metric", "better", "geomean ratio", "cases"],
                  [[_metric_link(m), Cell(str(s.better)), Cell(f"{s.geomean_ratio:.4f} ({_pct(s.geomean_ratio)})"),
                    Cell(str(s.cases))] for m, s in summary.items()])


def headline(result: GateResult) -> str:
    b, c = result.baseline.run_id, result.current.run_id
    return f"{ICON.get(result.exit_code, '')} bench compare {b} → {c}: {result.verdict_text}"


def _machine_reasons(rows: list[Comparison]) -> list[str]:
    """Per case, why its machine states differ (bench/gate/machine.py), both sides' figures in each reason."""
    by_case = {c.case: c.machine.reasons for c in rows if c.machine is not None}
    return [f"- machine state, {md.code(case)}: {md.text('; '.join(reasons))}" for case, reasons in by_case.items()]


def markdown(result: GateResult) -> str:
    rule = result.rule
    lines = [f"### {headline(result)}", ""]
    inconclusive = result.with_status(Status.INCONCLUSIVE)
    groups = {"Regressions": result.with_status(Status.REGRESSION),
              "Inconclusive (the interval straddles the threshold)": [c for c in inconclusive if c.machine is None],
              "Inconclusive: the machine's state differed between the runs (whatever the interval says)":
                  [c for c in inconclusive if c.machine is not None],
              "Improvements": result.with_status(Status.IMPROVEMENT)}
    if result.exit_code != ExitCode.OK:
        lines += ["> [!CAUTION]" if result.exit_code == ExitCode.REGRESSION else "> [!WARNING]",
                  f"> {result.verdict_text}", ""]
    if result.ignored_machine_state:
        lines += ["> [!NOTE]", ("> `--ignore-machine-state`: timings were judged by their intervals alone; the runs' "
                  "machine states (other processes' load, clocks) were not compared."), ""]
    for title, rows in groups.items():
        if rows:
            lines += [f"#### {title}", "", *_comparisons(rows), ""]
            notes = sorted({c.note for c in rows if c.note})  # why a verdict is what it is
            notes_and_reasons = [*(f"- {md.text(note)}" for note in notes), *_machine_reasons(rows)]
            lines += [*notes_and_reasons, ""] if notes_and_reasons else []
    lines += attribution.markdown(result)  # what changed around the flagged cases, which operators moved
    if result.confirmation:
        lines += ["#### Re-measured", "", *_confirmations(result.confirmation), ""]
    if result.summary:
        lines += ["#### Suite summary (geometric mean of current/baseline over cases)", "",
                  *_summary(result.summary), ""]
    problems = [(f"failed in {f.run}", f.case, f.reason) for f in result.failed]
    problems += [(f"skipped in {s.run}", s.case, s.reason) for s in result.skipped]
    problems += [("not compared", n.case, f"baseline {n.baseline}; current {n.current}") for n in result.not_compared]
    problems += [("only in baseline", case, "") for case in result.only_in_baseline]
    problems += [("only in current", case, "") for case in result.only_in_current]
    if problems:
        lines += ["#### Cases not compared", ""]
        lines += [f"- **{what}**: {md.code(case)}" + (f": {md.text(reason[:300])}" if reason else "")
                  for what, case, reason in problems]
        lines.append("")
    machine = ("not applied: --ignore-machine-state" if result.ignored_machine_state else
               "bench/gate/machine.py")
    lines += [(f"<sub>Rule (bench/gate/rule.py): from the ratio and its {rule.ci_level * 100:g} % interval "
               f"(two-stage bootstrap over processes and repetitions, {rule.n_boot} resamples, seed {rule.seed}; "
               f"widened by the history's between-run spread where there is one; within one run, paired rounds "
               f"against the reference): regression when the interval excludes no change and the estimate is at "
               f"least the threshold (default {rule.threshold * 100:g} %); unchanged when the whole interval is "
               f"within the threshold; inconclusive otherwise, and, between two runs, for every timing measured "
               f"in materially different machine states ({machine}). Scalars without samples (quality, memory) "
               f"against the threshold only. {len(result.comparisons)} case × metric comparisons.</sub>"), ""]
    return "\n".join(lines)


def webhook_text(result: GateResult, limit: int = 10) -> str:
    lines = [headline(result)]
    for c in result.with_status(Status.REGRESSION)[:limit]:
        lines.append(f"• {c.case} {c.metric}: {fmt(c.baseline)} → {fmt(c.current)} {c.unit} ({_pct(c.ratio)})")
    lines += [f"• failed: {f.case} ({f.run})" for f in result.failed[:limit]]
    return "\n".join(lines)


def post_webhook(url: str, text: str, timeout: float = 10) -> int:
    """POST {"text": text} as JSON (Slack-compatible); returns the HTTP status. Raises OSError on failure."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # the user's own URL
        return response.status


def notify(result: GateResult, when: str = "problem") -> str | None:
    """POST to $BENCH_WEBHOOK_URL when set (always, or only when the exit code is not 0); a message."""
    url = os.environ.get(WEBHOOK_ENV)
    if not url or (when == "problem" and result.exit_code == ExitCode.OK):
        return None
    try:
        status = post_webhook(url, webhook_text(result))
    except (OSError, urllib.error.URLError) as exc:
        return f"webhook: POST failed: {exc}"
    return f"webhook: POST -> HTTP {status}"
