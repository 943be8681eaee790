"""Trend pages, one per case: each metric over runs (oldest first) with its confidence band, change points
marked, and every point linking to its run's HTML report.

Change points are the gate's own rule (bench/gate/changepoints.py: binary segmentation on per-run values,
a new level kept only when it moves the mean by >= 5 % and by >= 3 standard errors), the rule the HTML
report's trend plots already use, so the dashboard and the report agree on where a level changed.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from bench.gate.changepoints import change_points
from bench.metrics import METRICS
from bench.site.common import axis_title, fmt, machine_label, shown, trend_file
from bench.site.gather import Series, SiteData

PALETTE = ("#0969da", "#bc4c00", "#1a7f37", "#8250df", "#cf222e", "#6e7781")


def detect(series: Series) -> list[dict]:
    """The change points of one series: the run that starts each new level, and how far the level moved."""
    values = [p.value for p in series.points]
    found = change_points(values)
    bounds = [0, *found, len(values)]
    out = []
    for i, start in enumerate(found):
        before = values[bounds[i]:start]
        after = values[start:bounds[i + 2]]
        mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
        out.append({"index": start, "run_id": series.points[start].run_id, "commit": series.points[start].commit,
                    "before": mean_before, "after": mean_after,
                    "change": (mean_after - mean_before) / mean_before if mean_before else None})
    return out


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def figure(metric: str, group: list[Series], links: dict[str, str], points_of: dict) -> dict:
    """One metric of one case: a band (CI) and a line per machine; change points as dashed lines."""
    runs = sorted({(p.created_at, p.run_id) for s in group for p in s.points})
    x_of = {run_id: i for i, (_, run_id) in enumerate(runs)}
    traces, shapes, annotations = [], [], []
    for k, s in enumerate(group):
        colour = PALETTE[k % len(PALETTE)]
        xs = [x_of[p.run_id] for p in s.points]
        if any(p.ci_low is not None for p in s.points):
            band_x = xs + xs[::-1]
            band_y = ([shown(metric, p.ci_high if p.ci_high is not None else p.value) for p in s.points]
                      + [shown(metric, p.ci_low if p.ci_low is not None else p.value) for p in s.points][::-1])
            traces.append({"type": "scatter", "x": band_x, "y": band_y, "fill": "toself", "mode": "lines",
                           "line": {"width": 0}, "fillcolor": colour + "33", "hoverinfo": "skip",
                           "name": f"95 % CI ({s.machine})", "showlegend": k == 0})
        text = [f"{p.run_id}<br>{p.commit[:10]} {p.branch}<br>{_when(p.created_at)}<br>"
                f"{fmt(shown(metric, p.value))} {METRICS[metric].display_unit}"
                + (f" [{fmt(shown(metric, p.ci_low))}, {fmt(shown(metric, p.ci_high))}]" if p.ci_low is not None
                   else "") + ("<br>click: its report" if p.run_id in links else "") for p in s.points]
        traces.append({"type": "scatter", "mode": "lines+markers", "x": xs,
                       "y": [shown(metric, p.value) for p in s.points], "name": f"machine {s.machine}",
                       "line": {"color": colour}, "marker": {"size": 8}, "text": text, "hoverinfo": "text",
                       "customdata": [links.get(p.run_id) for p in s.points]})
        for cp in points_of[id(s)]:
            x = x_of[cp["run_id"]] - 0.5
            shapes.append({"type": "line", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": "#cf222e", "dash": "dash", "width": 2}})
            change = f"{100 * cp['change']:+.1f} %" if cp["change"] is not None else ""
            annotations.append({"x": x, "yref": "paper", "y": 1.02, "text": f"change point {change}",
                                "showarrow": False, "font": {"color": "#cf222e", "size": 11}})
    return {"data": traces,
            "layout": {"height": 340, "margin": {"l": 70, "r": 20, "t": 30, "b": 90}, "shapes": shapes,
                       "annotations": annotations, "hovermode": "closest",
                       "xaxis": {"tickmode": "array", "tickvals": list(range(len(runs))),
                                 "ticktext": [run_id[-22:] for _, run_id in runs], "tickangle": -30,
                                 "title": {"text": "run (oldest first)"}},
                       "yaxis": {"title": {"text": axis_title(metric) + ", median"}},
                       "legend": {"orientation": "h", "y": -0.45}}}


def pages(data: SiteData, links: dict[str, str]) -> list[dict]:
    """One page context per case: its metrics' figures, change points and the runs it appears in."""
    by_case: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for s in data.series:
        by_case[s.key].append(s)
    out = []
    for (suite, case_id), group in sorted(by_case.items()):
        record = data.record_of(suite, case_id)
        figures, sections, found = {}, [], []
        points_of = {id(s): detect(s) for s in group}
        for metric in dict.fromkeys(s.metric for s in group):
            of_metric = [s for s in group if s.metric == metric]
            fig_id = f"trend-{metric}"
            figures[fig_id] = figure(metric, of_metric, links, points_of)
            cps = [{**cp, "metric": metric, "machine": s.machine} for s in of_metric for cp in points_of[id(s)]]
            found += cps
            sections.append({"metric": metric, "title": axis_title(metric), "figure": fig_id,
                             "definition": METRICS[metric].definition, "change_points": cps})
        first = group[0]
        runs = sorted({(p.created_at, p.run_id, p.commit, p.branch) for s in group for p in s.points})
        out.append({"file": trend_file(suite, case_id), "suite": suite, "case_id": case_id,
                    "variant": first.variant, "model": first.model, "task": first.task, "workload": first.workload,
                    "backend": record.case.backend if record is not None else "unknown",
                    "machine": machine_label(record), "figures": figures, "sections": sections,
                    "change_points": found,
                    "runs": [{"run_id": r, "commit": c, "branch": b, "when": _when(t), "report": links.get(r)}
                             for t, r, c, b in runs]})
    return out
