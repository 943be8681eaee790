"""What the views share: page file names, shown values and units (bench/metrics.py), the Pareto front."""
from __future__ import annotations

import hashlib
import re

from bench.metrics import METRICS

VERDICT_COLOURS = {"regression": "#cf222e", "improvement": "#1a7f37", "unchanged": "#0969da",
                   "inconclusive": "#9a6700", "not gated": "#6e7781", None: "#8c959f"}


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


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def pareto_front(points: list[dict], x: str, y: str) -> list[dict]:
    """Points no other point beats on both axes: `x` higher is better, `y` lower is better; sorted by x."""
    def beaten(p):
        return any(o is not p and o[x] >= p[x] and o[y] <= p[y] and (o[x] > p[x] or o[y] < p[y]) for o in points)
    return sorted((p for p in points if not beaten(p)), key=lambda p: p[x])


def machine_label(record) -> str:
    return record.machine.label if record is not None and record.machine is not None else "?"
