"""Overview: one tile per case x headline metric, with a sparkline over runs, coloured by the gate's verdict of
the newest pair of runs (bench/site/verdicts.py), filterable by machine, suite, backend and model."""
from __future__ import annotations

from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.site.common import VERDICT_COLOURS, shown, trend_file
from bench.site.compare import machine_note
from bench.site.gather import SiteData
from bench.site.verdicts import Latest

HEADLINE = ("ttft_ms", "tpot_ms", "decode_tok_s", "peak_rss_bytes", "perplexity", "kld_mean",
            "energy_decode_j_per_token")


def sparkline(values: list[float | None], colour: str) -> dict:
    """A plotly figure: the values over runs, no axes. The y range spans at least +-5 % of the median (the gate's
    default threshold), so run-to-run noise below what the gate calls a change stays flat."""
    known = sorted(v for v in values if v is not None)
    y_range = None
    if known:
        middle = known[len(known) // 2]
        low, high = min(known[0], middle - 0.05 * abs(middle)), max(known[-1], middle + 0.05 * abs(middle))
        y_range = [low, high] if high > low else None
    return {"data": [{"type": "scatter", "mode": "lines+markers", "y": values, "x": list(range(len(values))),
                      "line": {"color": colour, "width": 2}, "marker": {"size": 4}, "hoverinfo": "y"}],
            "layout": {"height": 60, "margin": {"l": 2, "r": 2, "t": 4, "b": 4}, "showlegend": False,
                       "xaxis": {"visible": False}, "yaxis": {"visible": False, "range": y_range},
                       "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"}}


def tiles(data: SiteData, verdicts: dict[tuple[str, str, str], Latest]) -> tuple[list[dict], dict[str, dict]]:
    """The tiles (sorted by suite, model, case, metric) and their sparkline figures, by figure id."""
    out: list[dict] = []
    figures: dict[str, dict] = {}
    for s in data.series:
        if s.metric not in HEADLINE or not s.points:
            continue
        case = data.case_info(s.suite, s.case_id)
        latest_verdict = verdicts.get((s.suite, s.case_id, s.metric))
        verdict = latest_verdict.comparison if latest_verdict else None
        status = verdict.status if verdict else None
        latest = s.points[-1]
        fig_id = f"spark-{len(figures)}"
        figures[fig_id] = sparkline([shown(s.metric, p.value) for p in s.points], VERDICT_COLOURS[status])
        ratio = ""
        if latest_verdict and verdict and verdict.ratio is not None:
            ci = (f" [{verdict.ci_low:.3f}, {verdict.ci_high:.3f}]"
                  if verdict.ci_low is not None and verdict.ci_high is not None else "")
            ratio = f"x{verdict.ratio:.3f}{ci} vs {latest_verdict.baseline_run}"
        note = machine_note(verdict.machine if verdict else None)
        out.append({
            "suite": s.suite, "machine": s.machine,
            "machine_label": case.machine if case is not None and case.machine != "?" else s.machine,
            "backend": case.backend if case is not None else "unknown", "model": s.model,
            "variant": s.variant, "workload": s.workload, "case_id": s.case_id, "metric": s.metric,
            "label": METRICS[s.metric].label, "unit": METRICS[s.metric].display_unit,
            "value": fmt(shown(s.metric, latest.value)), "runs": len(s.points), "latest_run": latest.run_id,
            "status": status or "no verdict", "colour": VERDICT_COLOURS[status], "ratio": ratio, "note": note,
            "trend": trend_file(s.suite, s.case_id), "figure": fig_id,
        })
    out.sort(key=lambda t: (t["suite"], t["model"], t["variant"], t["workload"], HEADLINE.index(t["metric"])))
    return out, figures


def context(data: SiteData, verdicts: dict[tuple[str, str, str], Latest]) -> dict:
    found, figures = tiles(data, verdicts)
    filters = {name: sorted({t[name] for t in found}) for name in ("machine", "suite", "backend", "model")}
    counts: dict[str, int] = {}
    for t in found:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {"tiles": found, "figures": figures, "filters": filters, "counts": counts,
            "n_runs": len(data.run_rows), "n_loaded": len(data.runs), "colours": VERDICT_COLOURS}
