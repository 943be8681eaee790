"""Report plots (matplotlib Agg + seaborn, imported lazily; extra `report`), each answering one question.

Every function takes entries (a record and its run, bench/report/tables.py) and returns a `Plot`
(title, question, caption, base64 PNG) or None when the runs have no data for it. Units are in axis
labels; metric names match bench/metrics.py.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

from bench.metrics import METRICS, MIB
from bench.presentation.pairing import quality_and_speed
from bench.presentation.pareto import pareto_front
from bench.records.schema import RawSamples
from bench.report.tables import Entry, serving_levels


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


def case_label(entry: Entry, several_runs: bool) -> str:
    r = entry.record
    label = f"{r.variant} · {r.workload.short if r.workload else r.task}"
    return f"{entry.run} · {label}" if several_runs else label


def _ok(entries: list[Entry], task: str | None = None) -> list[Entry]:
    return [e for e in entries if e.record.ok and (task is None or e.record.task == task)]


def quality_metric(entries: list[Entry]) -> str | None:
    """KLD when any record has it, else perplexity."""
    present = {m for e in _ok(entries) for m, v in e.record.metrics.items() if v is not None}
    for name in ("kld_mean", "perplexity"):
        if name in present:
            return name
    return None


@dataclass
class _Point:
    x: float
    y: float
    mem: float
    workload: str
    label: str


def pareto(entries: list[Entry], several_runs: bool) -> Plot | None:
    quality = quality_metric(entries)
    if quality is None:
        return None
    points = []
    for pair in quality_and_speed(((e.run, e.record) for e in entries), lambda r: r.value(quality) is not None):
        score = pair.quality.value(quality)
        assert score is not None  # has_quality
        variant = pair.speed.variant
        points.append(_Point(pair.decode_tok_s, score, (pair.peak_rss_bytes or 0.0) / MIB, pair.workload.short,
                             f"{pair.run} · {variant}" if several_runs else variant))
    if len(points) < 2:
        return None
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    workloads = sorted({p.workload for p in points})
    colors = dict(zip(workloads, sns.color_palette("deep", len(workloads))))
    biggest = max(p.mem for p in points) or 1
    for wl in workloads:
        group = [p for p in points if p.workload == wl]
        front = pareto_front(group, lambda p: p.x, lambda p: p.y)
        ax.scatter([p.x for p in group], [p.y for p in group], s=[40 + 400 * p.mem / biggest for p in group],
                   color=colors[wl], alpha=0.55, label=f"{wl}")
        ax.plot([p.x for p in front], [p.y for p in front], "-", color=colors[wl], lw=2)
        ax.scatter([p.x for p in front], [p.y for p in front], s=[40 + 400 * p.mem / biggest for p in front],
                   facecolor="none", edgecolor="black", lw=1.5)
        for p in group:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    unit = METRICS[quality].unit
    ax.set_xlabel("decode throughput, decode_tok_s (tokens/s) → better")
    ax.set_ylabel(f"{quality}" + (f" ({unit})" if unit else "") + " ↓ better")
    ys = [p.y for p in points]
    positive = [y for y in ys if y > 0]
    if quality.startswith("kld") and positive:
        # KLD spans orders of magnitude and is exactly 0 for the reference: linear near 0, log above
        ax.set_yscale("symlog", linthresh=min(positive))
    else:
        ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
    ax.legend(title="workload (frontier: line, black edge)", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.margins(0.15)
    return Plot("pareto", "Quality vs speed", "Which variants are not beaten on both quality and speed?",
                f"Each point is a variant at one workload; marker area is proportional to peak RSS "
                f"(largest: {biggest:.0f} MiB). The line joins the Pareto front (no other point is both faster "
                f"and better on {quality})." + (" The y axis is linear below the smallest non-zero KLD and "
                                                 "logarithmic above it." if quality.startswith("kld") and positive
                                                 else ""),
                _png(fig), (quality, "decode_tok_s", "peak_rss_bytes"))


LATENCY_PANELS = ("ttft_ms", "tpot_ms", "e2e_ms")


def latency_distributions(entries: list[Entry], several_runs: bool,
                          samples: Callable[[Entry], RawSamples | None]) -> Plot | None:
    rows = [(e, raw) for e in _ok(entries, "latency") if (raw := samples(e)) is not None]
    if not rows:
        return None
    plt, _ = _plt()
    labels = [case_label(e, several_runs) for e, _ in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.2 + 0.45 * len(rows)), sharey=True)
    for ax, metric in zip(axes, LATENCY_PANELS):
        for i, (e, raw) in enumerate(rows):
            values = raw.series(metric)
            ax.scatter(values, [i] * len(values), s=9, alpha=0.35, color="tab:blue", lw=0)
            s = e.record.summary(metric)
            if s is not None and s.median is not None:
                lo, hi = s.ci_low, s.ci_high
                if lo is not None and hi is not None:
                    ax.errorbar(s.median, i, xerr=[[s.median - lo], [hi - s.median]], fmt="none",
                                ecolor="black", elinewidth=2, capsize=5)
                ax.plot(s.median, i, "D", color="tab:red", ms=6)
        ax.set_xlabel(f"{metric} ({METRICS[metric].unit})")
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
    return Plot("latency", "Latency distributions",
                "How spread out is each case's latency, and how sure is its median?",
                "Dots: every measured repetition (raw samples). Red diamond: median; black bar: its distribution-free "
                "95 % confidence interval.", _png(fig), LATENCY_PANELS)


def scaling(entries: list[Entry], several_runs: bool) -> list[Plot]:
    rows = [e for e in _ok(entries, "latency") if e.record.workload is not None]
    plots = []
    for axis, name in (("batch_size", "batch size"), ("prompt_tokens", "prompt length (tokens)")):
        if len({getattr(e.record.workload, axis) for e in rows}) < 2:
            continue
        others = [a for a in ("batch_size", "prompt_tokens", "new_tokens") if a != axis]
        series: dict[str, list[Entry]] = {}
        for e in rows:
            fixed = ", ".join(f"{a.split('_')[0]} {getattr(e.record.workload, a)}" for a in others)
            key = (f"{e.run} · " if several_runs else "") + f"{e.record.variant} ({fixed})"
            series.setdefault(key, []).append(e)
        plt, _ = _plt()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for key, group in series.items():
            group = sorted(group, key=lambda e: getattr(e.record.workload, axis))
            xs = [getattr(e.record.workload, axis) for e in group]
            ttft = [e.record.summary("ttft_ms") for e in group]
            med = [t.median if t and t.median is not None else float("nan") for t in ttft]
            err = [[m - (t.ci_low if t and t.ci_low is not None else m) for m, t in zip(med, ttft)],
                   [(t.ci_high if t and t.ci_high is not None else m) - m for m, t in zip(med, ttft)]]
            ax1.errorbar(xs, med, yerr=err, marker="o", capsize=4, label=key)
            ax2.plot(xs, [e.record.value("decode_tok_s") for e in group], marker="o", label=key)
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


def memory(entries: list[Entry], several_runs: bool) -> Plot | None:
    rows = [e for e in _ok(entries) if e.record.value("peak_rss_bytes")]
    if not rows:
        return None
    plt, _ = _plt()
    labels = [case_label(e, several_runs) for e in rows]
    weights = [(e.record.value("model_size_bytes") or 0) / MIB for e in rows]
    total = [(e.record.value("peak_rss_bytes") or 0) / MIB for e in rows]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * len(rows)))
    ax.barh(labels, weights, color="tab:orange", label="weights (model_size_bytes)")
    ax.barh(labels, [t - w for t, w in zip(total, weights)], left=weights, color="tab:gray",
            label="rest of peak RSS (interpreter, libraries, activations, KV cache)")
    for i, t in enumerate(total):
        ax.text(t, i, f" {t:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak_rss_bytes, in MiB")
    ax.legend(fontsize=8, loc="lower right")
    unknown = sum(1 for e in rows if not e.record.value("model_size_bytes"))
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
                f"segmentation on per-run medians, minimum effect 5 %, see bench/gate/changepoints.py).", _png(fig),
                (metric,))


# ---------------------------------------------------------------- context (suites/context.yaml)

def _series(entries: list[Entry], several_runs: bool, task: str) -> dict[str, list[Entry]]:
    """Ok records of `task` grouped into one line per run and variant (and batch size, for latency)."""
    series: dict[str, list[Entry]] = {}
    for e in _ok(entries, task):
        r = e.record
        key = (f"{e.run} · " if several_runs else "") + r.variant + (f" (batch {r.workload.batch_size})"
                                                                     if r.workload and task == "latency" else "")
        series.setdefault(key, []).append(e)
    return series


def context_curves(entries: list[Entry], several_runs: bool) -> Plot | None:
    """TPOT and peak memory against the prompt length, one line per variant."""
    rows = [e for e in _ok(entries, "latency") if e.record.workload is not None]
    if len({e.record.workload.prompt_tokens for e in rows if e.record.workload}) < 2:
        return None
    plt, _ = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, group in _series(rows, several_runs, "latency").items():
        group = sorted(group, key=lambda e: e.record.workload.prompt_tokens if e.record.workload else 0)
        xs = [e.record.workload.prompt_tokens if e.record.workload else 0 for e in group]
        tpot = [e.record.summary("tpot_ms") for e in group]
        med = [t.median if t and t.median is not None else float("nan") for t in tpot]
        err = [[m - (t.ci_low if t and t.ci_low is not None else m) for m, t in zip(med, tpot)],
               [(t.ci_high if t and t.ci_high is not None else m) - m for m, t in zip(med, tpot)]]
        ax1.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=key)
        ax2.plot(xs, [(e.record.value("peak_rss_bytes") or float("nan")) / MIB for e in group], marker="o", label=key)
    ax1.set_yscale("log")  # no cache grows by orders of magnitude over the cached variants
    ax1.set_ylabel("tpot_ms (ms), median with 95 % CI, log scale")
    ax2.set_ylabel("peak_rss_bytes, in MiB")
    for ax in (ax1, ax2):
        ax.set_xlabel("context: prompt length (tokens)")
    ax2.legend(fontsize=8, loc="best")
    return Plot("context", "Decode time and memory against context length",
                "How do the time per output token and the peak memory grow with the context?",
                "One line per variant. Each point is a latency case at that prompt length; TPOT covers the new tokens "
                "decoded after the prompt (the KV cache grows from prompt to prompt + new tokens).", _png(fig),
                ("tpot_ms", "peak_rss_bytes"))


def perplexity_vs_window(entries: list[Entry], several_runs: bool) -> Plot | None:
    """Perplexity against the evaluation window, one line per variant (a suite listing several windows)."""
    series = {k: g for k, g in _series(entries, several_runs, "perplexity").items()
              if len({e.record.case.perplexity.window for e in g}) >= 2}
    if not series:
        return None
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, group in series.items():
        group = sorted(group, key=lambda e: e.record.case.perplexity.window)
        ax.plot([e.record.case.perplexity.window for e in group], [e.record.value("perplexity") for e in group],
                marker="o", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("perplexity window (tokens of context per forward pass)")
    ax.set_ylabel("perplexity ↓ better")
    ax.legend(fontsize=8, loc="best")
    return Plot("perplexity-window", "Perplexity against context window",
                "How much does more context lower perplexity, and does every variant keep that gain?",
                "One line per variant; every window scores the same tokens (each token once), with up to window - 1 "
                "tokens of context (at least window - stride).", _png(fig), ("perplexity",))


# ---------------------------------------------------------------- serving (bench/serving)

def _serving_series(entries: list[Entry], several_runs: bool) -> dict[tuple[str, str], list]:
    """(model, server label) -> its ok or stopped levels, sorted by request throughput."""
    series: dict[tuple[str, str], list] = {}
    for entry, level in serving_levels(entries):
        if level.status in ("ok", "stopped") and level.value("serve_request_rps"):
            label = f"{entry.run} · {entry.record.variant}" if several_runs else entry.record.variant
            series.setdefault((entry.record.model, label), []).append(level)
    return {k: sorted(v, key=lambda lv: lv.value("serve_request_rps")) for k, v in series.items()}


def serving_curves(entries: list[Entry], several_runs: bool) -> list[Plot]:
    """Latency against throughput per server, one figure per model: where does each server saturate?"""
    series = _serving_series(entries, several_runs)
    plots = []
    for model in sorted({m for m, _ in series}):
        plt, _ = _plt()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for (m, label), levels in series.items():
            if m != model:
                continue
            xs = [lv.value("serve_request_rps") for lv in levels]
            for ax, metric in zip(axes, ("serve_ttft_ms", "serve_tpot_ms", "serve_e2e_ms")):
                med = [(lv.metrics.get(metric).median if lv.metrics.get(metric) else None) for lv in levels]
                p99 = [(lv.metrics.get(metric).p99 if lv.metrics.get(metric) else None) for lv in levels]
                line, = ax.plot(xs, [float("nan") if v is None else v for v in med], marker="o", label=label)
                ax.plot(xs, [float("nan") if v is None else v for v in p99], ls="--", marker=".",
                        color=line.get_color())
                ax.set_xlabel("serve_request_rps (requests/s)")
                ax.set_ylabel(f"{metric} ({METRICS[metric].unit}): p50 solid, p99 dashed")
                ax.set_yscale("log")
        axes[0].legend(fontsize=8)
        name = model.rstrip("/").split("/")[-1]
        plots.append(Plot(f"serving-curves-{name}", f"{name}: latency vs throughput per server",
                          "Where does each server saturate: how much latency does each extra request/s cost?",
                          "One point per load level (closed loops, open-loop rates, the sweep), sorted by achieved "
                          "request throughput; solid: median, dashed: p99 over the level's requests. A curve that "
                          "turns up steeply has reached the server's capacity.", _png(fig),
                          ("serve_request_rps", "serve_ttft_ms", "serve_tpot_ms", "serve_e2e_ms")))
    return plots


def serving_pareto(entries: list[Entry], several_runs: bool) -> Plot | None:
    """Tokens/s per user against total tokens/s: the trade-off a deployment picks a point on."""
    points = [(label, lv.value("serve_total_tok_s"), lv.value("serve_tok_s_per_user"), lv.key)
              for (_, label), levels in _serving_series(entries, several_runs).items() for lv in levels
              if lv.value("serve_total_tok_s") and lv.value("serve_tok_s_per_user")]
    if len(points) < 2:
        return None
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    labels = sorted({p[0] for p in points})
    colors = dict(zip(labels, sns.color_palette("deep", len(labels))))
    for label in labels:
        group = [p for p in points if p[0] == label]
        ax.scatter([p[1] for p in group], [p[2] for p in group], color=colors[label], label=label, alpha=0.7)
        for p in group:
            ax.annotate(p[3], (p[1], p[2]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(points, lambda p: p[1], lambda p: p[2], y_higher=True)
    ax.plot([p[1] for p in front], [p[2] for p in front], "-", color="black", lw=1.5, label="Pareto front")
    ax.set_xlabel("serve_total_tok_s (tokens/s, all users) → better")
    ax.set_ylabel("serve_tok_s_per_user (tokens/s, median user) ↑ better")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return Plot("serving-pareto", "Tokens/s per user vs total tokens/s",
                "Which server and load give the most total throughput for a given speed per user?",
                "Each point is one load level of one server (labelled with its level key); the black line joins "
                "the points no other point beats on both axes.", _png(fig),
                ("serve_total_tok_s", "serve_tok_s_per_user"))
