"""Compare view: any two runs side by side. The environment diff (library versions, driver, CPU/GPU, thread
settings, git sha: the run's RunMeta.environment and its records' machine fingerprints) is shown for any
pair; the gate's verdicts for the pairs bench/site/verdicts.py compared (each run against the one before it)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from bench.gate.result import Comparison, MachineDifference
from bench.metrics import METRICS
from bench.records.rundir import Run
from bench.site.common import VERDICT_COLOURS, fmt, shown

if TYPE_CHECKING:  # gather reads `environment` from here while it loads; verdicts imports gather
    from bench.site.gather import RunInfo
    from bench.site.verdicts import Pair


def environment(run: Run) -> dict[str, str]:
    """A run's environment as flat 'what: value' pairs (what the diff compares)."""
    env = run.meta.environment
    out: dict[str, str] = {
        "git sha": env.git_sha or "", "git branch": env.git_branch or "", "git dirty": str(env.git_dirty),
        "python": env.python or "", "platform": env.platform or "", "host": env.hostname or "",
        "CPU": env.cpu_model or "", "CPUs": str(env.cpu_count), "CPU affinity": str(env.cpu_affinity),
        "GPUs": ", ".join(str(g.get("name")) for g in env.gpus) if isinstance(env.gpus, list) else str(env.gpus),
    }
    out.update({f"library {k}": v for k, v in sorted(env.libraries.items())})
    out.update({f"thread env {k}": v for k, v in sorted(env.thread_env.items())})
    threads = sorted({r.case.threads for r in run.records})
    out["case threads"] = ", ".join(map(str, threads))
    machines = {r.machine.machine_id: r.machine for r in run.records if r.machine is not None}
    for machine in machines.values():
        prefix = "machine" if len(machines) == 1 else f"machine {machine.machine_id}"
        out[f"{prefix} id"] = machine.machine_id
        out[f"{prefix} CPU"] = f"{machine.cpu_model} x {machine.cpu_count}"
        out[f"{prefix} memory GiB"] = fmt(machine.memory_bytes / 2**30) if machine.memory_bytes else ""
        out[f"{prefix} GPUs"] = ", ".join(f"{g.get('name')} ({fmt((g.get('memory_total_bytes') or 0) / 2**30)} GiB)"
                                         for g in machine.gpus) or "none"
        out[f"{prefix} GPU driver"] = machine.gpu_driver or ""
        out.update({f"{prefix} library {k}": v for k, v in sorted(machine.libraries.items())})
    return out


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
            "status": c.status, "colour": VERDICT_COLOURS.get(c.status, "#8c959f"), "note": c.note,
            "machine": machine_note(c.machine)}


def context(runs: list[RunInfo], pairs: list[Pair], links: dict[str, str]) -> dict:
    runs = sorted(runs, key=lambda r: (r.created_at, r.run_id))
    return {"data": {
        "runs": [{"run_id": r.run_id, "suite": r.suite, "git": r.git_sha[:10],
                  "when": datetime.fromtimestamp(r.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M"),
                  "report": links.get(r.run_id)} for r in runs],
        "env": {r.run_id: r.environment for r in runs},
        "pairs": {p.key: {"verdict": p.result.verdict, "exit_code": p.result.exit_code,
                          "ignored_machine_state": p.result.ignored_machine_state,
                          "rows": [_row(c) for c in p.result.comparisons],
                          "not_compared": [n.model_dump() for n in p.result.not_compared]} for p in pairs},
        "default": [pairs[-1].baseline, pairs[-1].current] if pairs else
                   [r.run_id for r in runs[-2:]] if len(runs) >= 2 else [],
    }}
