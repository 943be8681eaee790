"""What the views share: page file names, shown values and units (bench/metrics.py), the verdicts' colours.

Numbers are shown by `fmt` and fronts found by `pareto_front` (bench/presentation/), as in the reports."""
from __future__ import annotations

import hashlib
import re

from bench.gate.result import Status
from bench.metrics import METRICS

VERDICT_COLOURS: dict[Status | None, str] = {
    Status.REGRESSION: "#cf222e", Status.IMPROVEMENT: "#1a7f37", Status.UNCHANGED: "#0969da",
    Status.INCONCLUSIVE: "#9a6700", Status.NOT_GATED: "#6e7781", None: "#8c959f"}  # None: no verdict


def trend_file(suite: str, case_id: str) -> str:
    """The trend page of a case, relative to the site's root: a plain, unique file name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{suite}--{case_id}")[:100]
    return f"trend/{slug}-{hashlib.sha256(f'{suite}/{case_id}'.encode()).hexdigest()[:8]}.html"


def shown(metric: str, value: float | None) -> float | None:
    """A recorded value in the unit reports show (bytes -> MiB), or None."""
    return None if value is None or metric not in METRICS else METRICS[metric].shown(value)


def axis_title(metric: str) -> str:
    m = METRICS[metric]
    unit = m.display_unit
    arrow = {"lower": " ↓ better", "higher": " ↑ better"}.get(m.better or "", "")
    return f"{m.label}" + (f" ({unit})" if unit else "") + arrow


def machine_label(record) -> str:
    return record.machine.label if record is not None and record.machine is not None else "?"
