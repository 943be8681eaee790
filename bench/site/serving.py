"""Serving view: latency against throughput per server over the load levels (sweep and fixed levels) of the
newest run of each suite with serving cases: p50 and p99 of TTFT, TPOT and e2e against the achieved request
rate, the suite's SLOs as horizontal lines, and goodput (requests meeting every SLO, per second) against the
request rate. The same levels and metrics as the HTML report's serving plots (bench/report/plots.py)."""
from __future__ import annotations

import math
from typing import Any

from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.records.schema import Summary
from bench.site.common import axis_title
from bench.site.gather import KeptRun, newest_with

PANELS = (("serve_ttft_ms", "ttft_ms"), ("serve_tpot_ms", "tpot_ms"), ("serve_e2e_ms", "e2e_ms"))
PALETTE = ("#0969da", "#bc4c00", "#1a7f37", "#8250df", "#cf222e")


def _levels(record) -> list:
    levels = [lv for lv in record.serving.levels if lv.status in ("ok", "stopped") and lv.value("serve_request_rps")]
    return sorted(levels, key=lambda lv: lv.value("serve_request_rps"))


def _pct(level, metric: str, which: str) -> float | None:
    value = level.metrics.get(metric)
    return getattr(value, which) if isinstance(value, Summary) else None


def latency_figure(records: list, metric: str, slo: float | None) -> dict:
    traces = []
    for k, r in enumerate(records):
        colour = PALETTE[k % len(PALETTE)]
        levels = _levels(r)
        xs = [lv.value("serve_request_rps") for lv in levels]
        for which, dash in (("median", "solid"), ("p99", "dash")):
            traces.append({"type": "scatter", "mode": "lines+markers", "x": xs,
                           "y": [_pct(lv, metric, which) for lv in levels], "name": f"{r.variant} {which}",
                           "line": {"color": colour, "dash": dash}, "text": [lv.key for lv in levels],
                           "hovertemplate": "%{text}: %{x:.3g} req/s, %{y:.4g} ms"})
    shapes, annotations = [], []
    if slo is not None:  # on a log axis plotly places a shape at data values, an annotation in log10 units
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": slo, "y1": slo,
                       "line": {"color": "#cf222e", "dash": "dot", "width": 2}})
        annotations.append({"xref": "paper", "x": 1, "y": math.log10(slo), "text": f"SLO {fmt(slo)} ms",
                            "showarrow": False,
                            "xanchor": "right", "yanchor": "bottom", "font": {"color": "#cf222e"}})
    return {"data": traces, "layout": {"height": 350, "margin": {"l": 70, "r": 20, "t": 40, "b": 50},
                                       "title": {"text": f"{METRICS[metric].label}: p50 (solid) and p99 (dashed)",
                                                 "font": {"size": 14}, "x": 0.08, "xanchor": "left"},
                                       "shapes": shapes, "annotations": annotations,
                                       "xaxis": {"title": {"text": axis_title("serve_request_rps")}},
                                       "yaxis": {"title": {"text": axis_title(metric)},
                                                 "type": "log"},
                                       "legend": {"orientation": "h", "y": -0.25}}}


def goodput_figure(records: list) -> dict:
    traces = []
    for k, r in enumerate(records):
        colour = PALETTE[k % len(PALETTE)]
        levels = _levels(r)
        xs = [lv.value("serve_request_rps") for lv in levels]
        traces.append({"type": "scatter", "mode": "lines+markers", "x": xs, "name": f"{r.variant} goodput",
                       "y": [lv.value("serve_goodput_rps") for lv in levels], "line": {"color": colour},
                       "text": [lv.key for lv in levels], "hovertemplate": "%{text}: goodput %{y:.3g} req/s"})
    top = max((x for t in traces for x in t["x"]), default=1)
    traces.append({"type": "scatter", "mode": "lines", "x": [0, top], "y": [0, top],
                   "name": "every request meets the SLOs",
                   "line": {"color": "#8c959f", "dash": "dot"}})
    return {"data": traces, "layout": {"height": 350, "margin": {"l": 70, "r": 20, "t": 40, "b": 50},
                                       "title": {"text": "goodput: requests/s meeting every SLO",
                                                 "font": {"size": 14}, "x": 0.08, "xanchor": "left"},
                                       "xaxis": {"title": {"text": axis_title("serve_request_rps")}},
                                       "yaxis": {"title": {"text": axis_title("serve_goodput_rps")}},
                                       "legend": {"orientation": "h", "y": -0.25}}}


def context(runs_by_suite: dict[str, list[KeptRun]]) -> dict:
    sections: list[dict] = []
    figures: dict[str, dict] = {}
    for suite, runs in sorted(runs_by_suite.items()):
        with_serving = newest_with(runs, lambda r: any(rec.ok and rec.serving for rec in r.records), 1)
        if not with_serving:
            continue
        run = with_serving[-1]
        records = [r for r in run.records if r.ok and r.serving]
        for model in sorted({r.model for r in records}):
            of_model = [r for r in records if r.model == model]
            slo = of_model[0].case.serving.slo if of_model[0].case.serving else None
            section: dict[str, Any] = {"suite": suite, "run": run.run_id, "model": model, "figures": [], "rows": [],
                       "slo": {k: v for k, v in (slo.model_dump() if slo else {}).items() if v is not None}}
            for metric, slo_key in PANELS:
                fig_id = f"serving-{len(figures)}"
                figures[fig_id] = latency_figure(of_model, metric, getattr(slo, slo_key) if slo else None)
                section["figures"].append(fig_id)
            fig_id = f"serving-{len(figures)}"
            figures[fig_id] = goodput_figure(of_model)
            section["figures"].append(fig_id)
            for r in of_model:
                for lv in _levels(r):
                    section["rows"].append({
                        "server": r.variant, "level": lv.key, "load": lv.label, "status": lv.status,
                        "rps": fmt(lv.value("serve_request_rps")), "goodput": fmt(lv.value("serve_goodput_rps")),
                        "slo_met": fmt(lv.value("serve_slo_fraction")),
                        "ttft": f"{fmt(_pct(lv, 'serve_ttft_ms', 'median'))} / {fmt(_pct(lv, 'serve_ttft_ms', 'p99'))}",
                        "tpot": f"{fmt(_pct(lv, 'serve_tpot_ms', 'median'))} / {fmt(_pct(lv, 'serve_tpot_ms', 'p99'))}",
                        "errors": fmt(lv.value("serve_error_rate"))})
            sections.append(section)
    return {"sections": sections, "figures": figures}
