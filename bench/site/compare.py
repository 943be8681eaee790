"""Compare view: any two runs side by side. The environment diff (library versions, driver, CPU/GPU, thread
settings, git sha: each run's entries from bench/site/gather.py `environment`) is shown for any pair; the gate's
verdicts for the pairs bench/site/verdicts.py compared (each run against the one before it), with, for the cases they
flag, what changed around them and which of their operators moved (bench/gate/attribution.py)."""
from __future__ import annotations

from datetime import datetime, timezone

from bench.gate import attribution
from bench.gate.result import Comparison, MachineDifference
from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.site.common import VERDICT_COLOURS, shown
from bench.site.gather import RunInfo
from bench.site.verdicts import Pair


def machine_note(machine: MachineDifference | None) -> str:
    """Why the two sides' machine states make a timing comparison inconclusive (the gate's reasons), or ''."""
    if machine is None or not machine.reasons:
        return ""
    return "machine state differs: " + "; ".join(machine.reasons)


def _row(c: Comparison) -> dict:
    return {"case": c.case, "variant": c.variant, "metric": c.metric,
            "unit": METRICS[c.metric].display_unit if c.metric in METRICS else c.unit,
            "baseline": fmt(shown(c.metric, c.baseline)) if c.baseline is not None else "n/a",
            "current": fmt(shown(c.metric, c.current)) if c.current is not None else "n/a",
            "ratio": fmt(c.ratio) if c.ratio is not None else "n/a",
            "ci": f"[{c.ci_low:.4g}, {c.ci_high:.4g}]" if c.ci_low is not None and c.ci_high is not None else "",
            "status": c.status, "colour": VERDICT_COLOURS[c.status], "note": c.note,
            "machine": machine_note(c.machine)}


def context(runs: list[RunInfo], pairs: list[Pair], links: dict[str, str]) -> dict:
    runs = sorted(runs, key=lambda r: (r.created_at, r.run_id))
    return {"data": {
        "runs": [{"run_id": r.run_id, "suite": r.suite, "git": r.git_sha[:10],
                  "when": datetime.fromtimestamp(r.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M"),
                  "report": links.get(r.run_id)} for r in runs],
        "env": {r.run_id: r.environment for r in runs},
        "pairs": {p.key: {"verdict": p.result.verdict_text, "exit_code": p.result.exit_code,
                          "ignored_machine_state": p.result.ignored_machine_state,
                          "rows": [_row(c) for c in p.result.comparisons],
                          "attribution": attribution.site_tables(p.result),  # what changed, which operators moved
                          "not_compared": [n.model_dump() for n in p.result.not_compared]} for p in pairs},
        "default": [pairs[-1].baseline, pairs[-1].current] if pairs else
                   [r.run_id for r in runs[-2:]] if len(runs) >= 2 else [],
    }}
