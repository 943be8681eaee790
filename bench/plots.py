"""Report plots (matplotlib Agg + seaborn, imported lazily; extra `report`), each answering one question.

Every function takes records (case records with an added "run" key, and "raw" samples when
loaded) and returns a `Plot` (title, question, caption, base64 PNG) or None when the run has no
data for it. Units are in axis labels; metric names match bench/metrics.py.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from bench.metrics import METRICS

MIB = 1024 * 1024


@dataclass
class Plot:
    key: str
    title: str
    question: str
    caption: str
    png_base64: str
    metrics: tuple = ()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _workload(r: dict) -> str:
    w = r.get("workload") or {}
    return f"b{w.get('batch_size')} p{w.get('prompt_tokens')} n{w.get('new_tokens')}" if w else "perplexity"


def case_label(r: dict, several_runs: bool) -> str:
    label = f"{r['variant']} · {_workload(r)}"
    return f"{r['run']} · {label}" if several_runs else label


def _median(r: dict, metric: str):
    v = r.get("metrics", {}).get(metric)
    return v.get("median") if isinstance(v, dict) else v


def _ok(records, task=None):
    return [r for r in records if r["status"] == "ok" and (task is None or r.get("task") == task)]


def quality_metric(records: list[dict]) -> str | None:
    """KLD when any record has it (a metric whose name contains 'kld'), else perplexity."""
    present = {m for r in _ok(records) for m, v in r.get("metrics", {}).items() if v is not None}
    for name in METRICS:
        if "kld" in name and name in present:
            return name
    return "perplexity" if "perplexity" in present else None


def pareto(records: list[dict], several_runs: bool) -> Plot | None:
    quality = quality_metric(records)
    if quality is None:
        return None
    scores = {(r["run"], r["model"], r["variant"]): r for r in _ok(records) if _median(r, quality) is not None}
    points = []
    for r in _ok(records, "latency"):
        q = scores.get((r["run"], r["model"], r["variant"]))
        tok_s = r["metrics"].get("decode_tok_s")
        if q is None or not tok_s:
            continue
        mem = max(filter(None, [r["metrics"].get("peak_rss_bytes"), q["metrics"].get("peak_rss_bytes")]), default=0)
        points.append(dict(x=tok_s, y=_median(q, quality), mem=mem / MIB, workload=_workload(r),
                           label=f"{r['run']} · {r['variant']}" if several_runs else r["variant"]))
    if len(points) < 2:
        return None
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    workloads = sorted({p["workload"] for p in points})
    colors = dict(zip(workloads, sns.color_palette("deep", len(workloads))))
    biggest = max(p["mem"] for p in points) or 1
    for wl in workloads:
        group = [p for p in points if p["workload"] == wl]
        front = sorted((p for p in group if not any(o["x"] >= p["x"] and o["y"] <= p["y"] and o is not p and
                                                    (o["x"] > p["x"] or o["y"] < p["y"]) for o in group)),
                       key=lambda p: p["x"])
        ax.scatter([p["x"] for p in group], [p["y"] for p in group], s=[40 + 400 * p["mem"] / biggest for p in group],
                   color=colors[wl], alpha=0.55, label=f"{wl}")
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "-", color=colors[wl], lw=2)
        ax.scatter([p["x"] for p in front], [p["y"] for p in front], s=[40 + 400 * p["mem"] / biggest for p in front],
                   facecolor="none", edgecolor="black", lw=1.5)
        for p in group:
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    unit = METRICS[quality].unit
    ax.set_xlabel("decode throughput, decode_tok_s (tokens/s) → better")
    ax.set_ylabel(f"{quality}" + (f" ({unit})" if unit else "") + " ↓ better")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.legend(title="workload (frontier: line, black edge)", fontsize=8)
    ax.margins(0.15)
    return Plot("pareto", "Quality vs speed", "Which variants are not beaten on both quality and speed?",
                f"Each point is a variant at one workload; marker area is proportional to peak RSS "
                f"(largest: {biggest:.0f} MiB). The line joins the Pareto front (no other point is both faster "
                f"and better on {quality}).", _png(fig), (quality, "decode_tok_s", "peak_rss_bytes"))


LATENCY_PANELS = ("ttft_ms", "tpot_ms", "e2e_ms")


def latency_distributions(records: list[dict], several_runs: bool) -> Plot | None:
    rows = [r for r in _ok(records, "latency") if r.get("raw")]
    if not rows:
        return None
    plt, _ = _plt()
    labels = [case_label(r, several_runs) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.2 + 0.45 * len(rows)), sharey=True)
    for ax, metric in zip(axes, LATENCY_PANELS):
        for i, r in enumerate(rows):
            values = r["raw"].get(metric) or []
            ax.scatter(values, [i] * len(values), s=9, alpha=0.35, color="tab:blue", lw=0)
            s = r["metrics"].get(metric) or {}
            if s.get("median") is not None:
                lo, hi = s.get("ci_low"), s.get("ci_high")
                if lo is not None:
                    ax.errorbar(s["median"], i, xerr=[[s["median"] - lo], [hi - s["median"]]], fmt="none",
                                ecolor="black", elinewidth=2, capsize=5)
                ax.plot(s["median"], i, "D", color="tab:red", ms=6)
        ax.set_xlabel(f"{metric} ({METRICS[metric].unit})")
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
    return Plot("latency", "Latency distributions", "How spread out is each case's latency, and how sure is its median?",
                "Dots: every measured repetition (raw samples). Red diamond: median; black bar: its distribution-free "
                "95 % confidence interval.", _png(fig), LATENCY_PANELS)


def scaling(records: list[dict], several_runs: bool) -> list[Plot]:
    rows = _ok(records, "latency")
    plots = []
    for axis, name in (("batch_size", "batch size"), ("prompt_tokens", "prompt length (tokens)")):
        if len({r["workload"][axis] for r in rows}) < 2:
            continue
        others = [a for a in ("batch_size", "prompt_tokens", "new_tokens") if a != axis]
        series: dict[str, list[dict]] = {}
        for r in rows:
            fixed = ", ".join(f"{a.split('_')[0]} {r['workload'][a]}" for a in others)
            key = (f"{r['run']} · " if several_runs else "") + f"{r['variant']} ({fixed})"
            series.setdefault(key, []).append(r)
        plt, _ = _plt()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for key, group in series.items():
            group = sorted(group, key=lambda r: r["workload"][axis])
            xs = [r["workload"][axis] for r in group]
            ttft = [r["metrics"]["ttft_ms"] for r in group]
            med = [t["median"] for t in ttft]
            err = [[m - (t.get("ci_low") if t.get("ci_low") is not None else m) for m, t in zip(med, ttft)],
                   [(t.get("ci_high") if t.get("ci_high") is not None else m) - m for m, t in zip(med, ttft)]]
            ax1.errorbar(xs, med, yerr=err, marker="o", capsize=4, label=key)
            ax2.plot(xs, [r["metrics"].get("decode_tok_s") for r in group], marker="o", label=key)
        ax1.set_xlabel(name)
        ax1.set_ylabel("ttft_ms (ms), median with 95 % CI")
        ax2.set_xlabel(name)
        ax2.set_ylabel("decode_tok_s (tokens/s)")
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
        ax2.legend(fontsize=8, loc="best")
        plots.append(Plot(f"scaling-{axis}", f"TTFT and throughput vs {name}",
                          f"How do time to first token and decode throughput change with {name}?",
                          "One line per variant (other workload settings in brackets).", _png(fig),
                          ("ttft_ms", "decode_tok_s")))
    return plots


def memory(records: list[dict], several_runs: bool) -> Plot | None:
    rows = [r for r in _ok(records) if r["metrics"].get("peak_rss_bytes")]
    if not rows:
        return None
    plt, _ = _plt()
    labels = [case_label(r, several_runs) for r in rows]
    weights = [(r["metrics"].get("model_size_bytes") or 0) / MIB for r in rows]
    total = [r["metrics"]["peak_rss_bytes"] / MIB for r in rows]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * len(rows)))
    ax.barh(labels, weights, color="tab:orange", label="weights (model_size_bytes)")
    ax.barh(labels, [t - w for t, w in zip(total, weights)], left=weights, color="tab:gray",
            label="rest of peak RSS (interpreter, libraries, activations, KV cache)")
    for i, t in enumerate(total):
        ax.text(t, i, f" {t:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak_rss_bytes, in MiB")
    ax.legend(fontsize=8, loc="lower right")
    unknown = sum(1 for r in rows if not r["metrics"].get("model_size_bytes"))
    return Plot("memory", "Memory per case", "How much memory does each case need, and how much of it is weights?",
                "Bar length: peak resident memory of the case's process." +
                (f" {unknown} case(s) do not report their weight size (all grey)." if unknown else ""),
                _png(fig), ("peak_rss_bytes", "model_size_bytes"))


def trend(rows: list[dict], metric: str, change_points: dict[str, list[int]]) -> Plot | None:
    """rows: history.trend() output; change_points: series label -> indices of new levels."""
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"{r['variant']} · {r['workload']}", []).append(r)
    if not series or max(len(s) for s in series.values()) < 2:
        return None
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, points in series.items():
        line, = ax.plot(range(len(points)), [p["value"] for p in points], marker="o", label=label)
        for i in change_points.get(label, []):
            ax.axvline(i - 0.5, color=line.get_color(), ls="--", lw=1.5)
    runs = next(iter(sorted(series.values(), key=len, reverse=True)))
    ax.set_xticks(range(len(runs)), [f"{p['run_id'][-15:]}\n{p['git_commit'][:7]}" for p in runs], fontsize=7,
                  rotation=30)
    ax.set_ylabel(f"{metric} ({METRICS[metric].unit}), median")
    ax.legend(fontsize=8)
    n_cp = sum(len(v) for v in change_points.values())
    return Plot(f"trend-{metric}", f"Trend of {metric}", f"Did {metric} shift over the recorded runs?",
                f"One line per case, oldest run first; dashed lines: {n_cp} detected change point(s) (binary "
                f"segmentation on per-run medians, minimum effect 5 %, see bench/changepoints.py).", _png(fig),
                (metric,))
