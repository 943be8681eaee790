"""Quantization view: for every model, each variant's quality loss (Δ PPL and KLD against the reference,
bench/measure/quality.py) against its decode speed, marker size its peak memory; the Pareto front (no other
variant is both faster and closer to the reference) over the newest run, and arrows from where each
variant stood in the run before it."""
from __future__ import annotations

from typing import Any

from bench.metrics import MIB
from bench.presentation.formatting import fmt
from bench.presentation.pairing import quality_and_speed
from bench.presentation.pareto import pareto_front
from bench.records.rundir import Run
from bench.site.common import axis_title
from bench.site.gather import KeptRun, newest_with

QUALITY = ("kld_mean", "delta_ppl")


def variants(run: Run) -> list[dict]:
    """Per (model, workload, variant): quality from the perplexity case, speed and memory from the latency case
    (bench/presentation/pairing.py)."""
    out = []
    for pair in quality_and_speed(((run.run_id, r) for r in run.records),
                                  lambda q: any(q.value(m) is not None for m in QUALITY)):
        r, q, memory = pair.speed, pair.quality, pair.peak_rss_bytes
        out.append({"model": r.model, "workload": pair.workload.short, "variant": r.variant,
                    "decode_tok_s": pair.decode_tok_s, "kld_mean": q.value("kld_mean"),
                    "delta_ppl": q.value("delta_ppl"), "perplexity": q.value("perplexity"),
                    "memory_mib": memory / MIB if memory else None,
                    "weights_mib": (r.value("model_size_bytes") or 0) / MIB or None,
                    "reference": r.case.reference == r.variant})
    return out


def _front(points: list[dict], quality: str) -> list[dict]:
    """The variants no other is both faster than and closer to the reference on `quality`."""
    return pareto_front([p for p in points if p[quality] is not None], lambda p: p["decode_tok_s"],
                        lambda p: p[quality])


def figure(points: list[dict], before: dict, quality: str) -> dict:
    front = _front(points, quality)
    biggest = max((p["memory_mib"] or 0 for p in points), default=0) or 1
    traces = [{"type": "scatter", "mode": "markers+text", "name": "variants (size: peak memory)",
               "x": [p["decode_tok_s"] for p in points], "y": [p[quality] for p in points],
               "text": [p["variant"] for p in points], "textposition": "top right",
               "marker": {"size": [12 + 30 * (p["memory_mib"] or 0) / biggest for p in points], "color": "#0969da",
                          "opacity": 0.6, "line": {"width": [2 if p in front else 0 for p in points],
                                                   "color": "#000"}},
               "hovertext": [f"{p['variant']}: {fmt(p['decode_tok_s'])} tok/s, {quality} {fmt(p[quality])}, "
                             f"peak memory {fmt(p['memory_mib'])} MiB" for p in points], "hoverinfo": "text"},
              {"type": "scatter", "mode": "lines", "name": "Pareto front", "x": [p["decode_tok_s"] for p in front],
               "y": [p[quality] for p in front], "line": {"color": "#000", "width": 1.5}}]
    moved = [(before[p["variant"]], p) for p in points if p["variant"] in before
             and before[p["variant"]][quality] is not None and p[quality] is not None]
    if moved:
        traces.append({"type": "scatter", "mode": "markers", "name": "previous run",
                       "x": [b["decode_tok_s"] for b, _ in moved], "y": [b[quality] for b, _ in moved],
                       "marker": {"size": 9, "color": "#8c959f", "symbol": "circle-open"}})
    annotations = [{"x": p["decode_tok_s"], "y": p[quality], "ax": b["decode_tok_s"], "ay": b[quality],
                    "xref": "x", "yref": "y", "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2,
                    "arrowcolor": "#8c959f", "text": ""} for b, p in moved if b != p]
    return {"data": traces, "layout": {"height": 420, "margin": {"l": 80, "r": 20, "t": 20, "b": 60},
                                       "annotations": annotations, "hovermode": "closest",
                                       "xaxis": {"title": {"text": axis_title("decode_tok_s")}},
                                       "yaxis": {"title": {"text": axis_title(quality)}},
                                       "legend": {"orientation": "h", "y": -0.2}}}


def context(runs_by_suite: dict[str, list[KeptRun]]) -> dict:
    sections: list[dict] = []
    figures: dict[str, dict] = {}
    for suite, runs in sorted(runs_by_suite.items()):
        with_quality = newest_with(runs, lambda r: bool(variants(r)), 2)
        if not with_quality:
            continue
        latest = with_quality[-1]
        previous = with_quality[-2] if len(with_quality) > 1 else None
        now = variants(latest)
        then = variants(previous) if previous else []
        for model, workload in sorted({(p["model"], p["workload"]) for p in now}):
            points = [p for p in now if p["model"] == model and p["workload"] == workload]
            before = {p["variant"]: p for p in then if p["model"] == model and p["workload"] == workload}
            section: dict[str, Any] = {"suite": suite, "model": model, "workload": workload, "run": latest.run_id,
                       "previous": previous.run_id if previous else None, "figures": [], "rows": []}
            for quality in QUALITY:
                if any(p[quality] is not None for p in points):
                    fig_id = f"quant-{len(figures)}"
                    figures[fig_id] = figure(points, before, quality)
                    section["figures"].append({"id": fig_id, "quality": quality})
            fronts = {q: {p["variant"] for p in _front(points, q)} for q in QUALITY}
            for p in sorted(points, key=lambda p: -p["decode_tok_s"]):
                b = before.get(p["variant"])
                section["rows"].append({
                    "variant": p["variant"] + (" (reference)" if p["reference"] else ""),
                    "delta_ppl": fmt(p["delta_ppl"]), "kld_mean": fmt(p["kld_mean"]),
                    "decode_tok_s": fmt(p["decode_tok_s"]), "memory_mib": fmt(p["memory_mib"]),
                    "front": ", ".join(q for q in QUALITY if p["variant"] in fronts[q]) or "",
                    "moved": (f"{fmt(b['decode_tok_s'])} tok/s, KLD {fmt(b['kld_mean'])}, Δ PPL {fmt(b['delta_ppl'])}"
                              if b else "not in the previous run")})
            sections.append(section)
    return {"sections": sections, "figures": figures}
