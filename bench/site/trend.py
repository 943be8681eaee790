"""Trend pages, one per case: each metric over time (the run's date) with its confidence band, change points
marked, and every point linking to its run's HTML report. A year of nights stays readable: a date axis
(plotly picks the ticks), a range selector (last week, month, quarter, half year, year, all) and a range
slider under each plot, smaller markers on long series, and hover labels with run id, commit and branch.

Change points are the gate's own rule (bench/gate/changepoints.py: binary segmentation on per-run values,
a new level kept only when it moves the mean by >= 5 % and by >= 3 standard errors), the rule the HTML
report's trend plots already use, so the dashboard and the report agree on where a level changed.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone

from bench.gate.changepoints import change_points
from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.site.common import axis_title, trend_file
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


def date(ts: float) -> str:
    """A run's date on the time axis: UTC, in the form plotly reads as a date."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


RANGES = [{"count": 7, "label": "1w", "step": "day", "stepmode": "backward"},
          {"count": 1, "label": "1m", "step": "month", "stepmode": "backward"},
          {"count": 3, "label": "3m", "step": "month", "stepmode": "backward"},
          {"count": 6, "label": "6m", "step": "month", "stepmode": "backward"},
          {"count": 1, "label": "1y", "step": "year", "stepmode": "backward"},
          {"label": "all", "step": "all"}]
MANY_POINTS = 60  # beyond this many runs a line's markers shrink, so the line stays readable


class Labels:
    """Each run's date on the axis and the run part of its hover label, made once per run (a year of nights is
    hundreds of thousands of points)."""

    def __init__(self, links: dict[str, str]) -> None:
        self.links = links
        self._of: dict[str, tuple[str, str]] = {}

    def of(self, p) -> tuple[str, str]:
        if p.run_id not in self._of:
            who = f"run {p.run_id}<br>commit {p.commit[:10]} on {p.branch}<br>{_when(p.created_at)} UTC<br>"
            self._of[p.run_id] = (date(p.created_at), who)
        return self._of[p.run_id]

    def hover(self, scale: float, unit: str, p) -> str:
        """The point's hover label: its run, commit, branch and date, the value (shown = recorded x scale) and CI."""
        ci = f" [{fmt(p.ci_low * scale)}, {fmt(p.ci_high * scale)}]" if p.ci_low is not None else ""
        return (self.of(p)[1] + f"{fmt(p.value * scale)} {unit}{ci}"
                + ("<br>click: its report" if p.run_id in self.links else ""))


def figure(metric: str, group: list[Series], labels: Labels, points_of: dict) -> dict:
    """One metric of one case over time: a band (CI) and a line per machine; change points as dashed lines, drawn
    halfway between the last run of the old level and the first of the new one."""
    traces, shapes, annotations = [], [], []
    scale, unit = METRICS[metric].scale, METRICS[metric].display_unit  # shown value = recorded x scale
    for k, s in enumerate(group):
        colour = PALETTE[k % len(PALETTE)]
        xs = [labels.of(p)[0] for p in s.points]
        if any(p.ci_low is not None for p in s.points):
            band_y = ([(p.ci_high if p.ci_high is not None else p.value) * scale for p in s.points]
                      + [(p.ci_low if p.ci_low is not None else p.value) * scale for p in s.points][::-1])
            traces.append({"type": "scatter", "x": xs + xs[::-1], "y": band_y, "fill": "toself", "mode": "lines",
                           "line": {"width": 0}, "fillcolor": colour + "33", "hoverinfo": "skip",
                           "name": f"95 % CI ({s.machine})", "showlegend": k == 0})
        traces.append({"type": "scatter", "mode": "lines+markers", "x": xs,
                       "y": [p.value * scale for p in s.points], "name": f"machine {s.machine}",
                       "line": {"color": colour, "width": 1.5},
                       "marker": {"size": 8 if len(xs) <= MANY_POINTS else 4},
                       "text": [labels.hover(scale, unit, p) for p in s.points], "hoverinfo": "text",
                       "customdata": [labels.links.get(p.run_id) for p in s.points]})
        for cp in points_of[id(s)]:
            i = cp["index"]
            x = date((s.points[i - 1].created_at + s.points[i].created_at) / 2)
            shapes.append({"type": "line", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": "#cf222e", "dash": "dash", "width": 2}})
            change = f"{100 * cp['change']:+.1f} %" if cp["change"] is not None else ""
            annotations.append({"x": x, "yref": "paper", "y": 1.02, "text": f"change point {change}",
                                "showarrow": False, "font": {"color": "#cf222e", "size": 11}})
    return {"data": traces,
            "layout": {"height": 420, "margin": {"l": 70, "r": 20, "t": 40, "b": 40}, "shapes": shapes,
                       "annotations": annotations, "hovermode": "closest",
                       "xaxis": {"type": "date", "title": {"text": "run date (UTC)"},
                                 "rangeselector": {"buttons": RANGES, "x": 0, "y": 1.12},
                                 "rangeslider": {"visible": True, "thickness": 0.1}},
                       "yaxis": {"title": {"text": axis_title(metric) + ", median"}},
                       "legend": {"orientation": "h", "x": 0.3, "xanchor": "left", "y": 1.14}}}


RUN_ROWS = 60  # the trend page's table lists the newest runs; every run is on the plots


def pages(data: SiteData, links: dict[str, str]) -> Iterator[dict]:
    """One page context per case, made when asked for (so one page's figures are in memory at a time): its metrics'
    figures, change points and the runs it appears in."""
    by_case: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for s in data.series:
        by_case[s.key].append(s)
    labels = Labels(links)
    for (suite, case_id), group in sorted(by_case.items()):
        case = data.case_info(suite, case_id)
        figures, sections, found = {}, [], []
        points_of = {id(s): detect(s) for s in group}
        for metric in dict.fromkeys(s.metric for s in group):
            of_metric = [s for s in group if s.metric == metric]
            fig_id = f"trend-{metric}"
            figures[fig_id] = figure(metric, of_metric, labels, points_of)
            cps = [{**cp, "metric": metric, "machine": s.machine} for s in of_metric for cp in points_of[id(s)]]
            found += cps
            sections.append({"metric": metric, "title": axis_title(metric), "figure": fig_id,
                             "definition": METRICS[metric].definition, "change_points": cps})
        first = group[0]
        runs = sorted({(p.created_at, p.run_id, p.commit, p.branch) for s in group for p in s.points})
        yield {"file": trend_file(suite, case_id), "suite": suite, "case_id": case_id,
               "variant": first.variant, "model": first.model, "task": first.task, "workload": first.workload,
               "backend": case.backend if case is not None else "unknown",
               "machine": case.machine if case is not None else "?", "figures": figures, "sections": sections,
               "change_points": found, "n_runs": len(runs),
               "runs": [{"run_id": r, "commit": c, "branch": b, "when": _when(t), "report": links.get(r)}
                        for t, r, c, b in reversed(runs[-RUN_ROWS:])]}
