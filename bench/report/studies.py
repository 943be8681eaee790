"""Report sections of the attention and batching studies (suites/attention.yaml, suites/batching.yaml).

Shown only when a run has what they compare:
- **Attention kernels**: latency cases with an `attention` option: the kernel asked for, the attention
  operators the torch profiler saw (backends/hf/attention.py), whether they prove the kernel ran, TTFT
  and TPOT; skipped kernels with their reason.
- **Attention shape**: latency and perplexity cases over several models: KV heads and sliding window
  (each model's config.json as read when the case ran: the description's `attention_shape`; n/a for a
  record without it), KV-cache bytes per token computed and measured, TPOT, its ratio to
  the same variant on the reference model, and perplexity at each window.
- **Models measured in the same rounds** (a suite with `interleave: models` whose run has no attention-shape
  table): per workload and variant, each model's TTFT and TPOT and their ratios to the reference model.

Every ratio between two timings comes from the rounds both cases measured interleaved (bench/run/interleave.py:
the median of per-round ratios, with its bootstrap interval) where the records have it; a ratio of two medians
measured at different times is marked † with both sides' machine state (other processes' CPU load, contended).
- **Prefix caching**: serving cases with a shared-prefix workload (`request.shared_prefix_tokens`), the
  same server with its prefix cache off and on: TTFT median of each and the speedup (off / on) with a
  95 % bootstrap interval over requests (bench/gate/rule.py's resampling), and the hit rate where the
  server counts it.
- **Static vs dynamic batching** (a plot): per model, every server variant's load levels (TPOT and TTFT
  p50 against output tokens/s) with the offline static batch of the latency task (hf backends at each
  batch size: batch x new tokens / e2e, TPOT and TTFT medians) on the same axes.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from bench.core.description import AttentionShape
from bench.presentation.formatting import fmt
from bench.presentation.table import NA, Cell, Column, Table
from bench.records.schema import CaseRecord, Estimate, RawSamples
from bench.report.tables import Entry, metric_cell, paired_cell, ratio_cell, serving_levels

SamplesOf = Callable[[Entry], RawSamples | None]


def tables(entries: list[Entry], samples_of: SamplesOf) -> list[Table]:
    shape = shape_table(entries)
    models = None if shape else models_table(entries)  # the shape table shows the same ratios, and more
    return [t for t in (attention_table(entries), shape, models, prefix_cache_table(entries, samples_of)) if t]


# ---------------------------------------------------------------- ratios: from paired rounds, or marked

UNPAIRED = "†"
UNPAIRED_NOTE = (f"{UNPAIRED}: not measured in the same rounds (no paired ratio in the records): the ratio of two "
                 f"medians measured at different times, with the machine state of each side (other processes' CPU "
                 f"load while each was measured); a busy machine, not the model, can make that difference.")


def unpaired_notes(rows: list[list[Cell]]) -> list[str]:
    """UNPAIRED_NOTE where a cell of `rows` is marked UNPAIRED."""
    return [UNPAIRED_NOTE] if any(cell.text.endswith(UNPAIRED) for row in rows for cell in row) else []


def machine_state(record: CaseRecord) -> str:
    """What else kept the machine busy while a latency case was measured, as recorded."""
    state = record.latency.machine if record.latency else None
    if state is None:
        return "machine state not recorded"
    return (f"other processes kept {state.other_cpu_load_mean:.2f} of {state.cpus} CPUs busy"
            + (" (contended)" if state.contended else ""))


def paired_or_marked(record: CaseRecord, paired: str, metric: str, partner: CaseRecord | None) -> Cell:
    """`metric` of `record` over `partner`'s: the paired-round ratio `paired` with its interval where the record has
    it, else the ratio of the two medians marked UNPAIRED with both sides' machine state."""
    if partner is None:
        return NA
    if partner is record:
        return Cell("reference")
    if isinstance(record.metrics.get(paired), Estimate):
        return paired_cell(record, paired, metric, partner)
    plain = ratio_cell(record.value(metric), partner.value(metric))
    if plain is NA:
        return NA
    return Cell(f"{plain.text} {UNPAIRED}", detail=f"not in the same rounds: {machine_state(record)}; "
                                                   f"{partner.model} {partner.variant}: {machine_state(partner)}")


def _latency_record(entries: list[Entry], run: str, model: str, variant: str, like: CaseRecord) -> CaseRecord | None:
    """The ok latency record of `model` and `variant` in `run` with the workload of `like`."""
    for e in entries:
        r = e.record
        if e.run == run and r.ok and r.task == "latency" and r.model == model and r.variant == variant \
                and r.workload == like.workload:
            return r
    return None


def reference_model(records: list[CaseRecord]) -> str | None:
    """The model others are compared to: the suite's (`interleave: models`), else the first model that ran."""
    return next((r.case.reference_model for r in records if r.case.reference_model), None) or \
        next((r.model for r in records), None)


# ---------------------------------------------------------------- attention kernels

def attention_table(entries: list[Entry]) -> Table | None:
    rows = []
    for e in entries:
        r = e.record
        if r.task != "latency" or "attention" not in r.case.options:
            continue
        seen = r.backend.attention if r.backend else None
        ops = ", ".join(f"{name} x{calls}" for name, calls in sorted(seen.kernel_ops.items())) if seen else ""
        verified = "" if seen is None else "yes" if seen.verified else "no"
        rows.append([Cell(r.model), Cell(r.variant), Cell(r.case.options["attention"]),
                     Cell(r.workload.label if r.workload else ""),
                     Cell(r.status if r.ok else f"{r.status}: {r.reason or ''}"), Cell(ops or ("" if r.ok else "n/a")),
                     Cell(verified, detail=seen.verdict if seen and not seen.verified else ""),
                     *(metric_cell(r, m) if r.ok else NA for m in ("ttft_ms", "tpot_ms")),
                     paired_or_marked(r, "tpot_vs_reference", "tpot_ms",
                                      _latency_record(entries, e.run, r.model, r.case.reference or "", r))
                     if r.ok else NA])
    if not rows:
        return None
    reference = next((str(e.record.case.reference) for e in entries if e.record.case.reference), "reference")
    return Table("Attention kernels: what was forced, and what the profiler saw run",
                 [Column("model", left=True), Column("variant", left=True), Column("attention", left=True),
                  Column("workload", left=True),
                  Column("status", left=True), Column("attention operators in the profile (calls)", left=True),
                  Column("verified", left=True), Column("TTFT ms", "ttft_ms"), Column("TPOT ms", "tpot_ms"),
                  Column(f"TPOT vs {reference}", "tpot_vs_reference")], rows,
                 [("The operators come from one profiled 16-token prefill and one decode step, run after measuring "
                   "(backends/hf/attention.py); 'verified' means the forced kernel's operator ran and no other fused "
                   "attention kernel did."),
                  (f"TPOT vs {reference}: on the same model and workload, from the rounds both measured interleaved "
                   f"(median of the per-round ratios, 95 % bootstrap interval).")] + unpaired_notes(rows))


# ---------------------------------------------------------------- attention shape (GQA, sliding window)

def shape_table(entries: list[Entry]) -> Table | None:
    ok = [e for e in entries if e.record.ok]
    models = sorted({e.record.model for e in ok})
    if len(models) < 2 or not any("kv_cache_bytes_per_token" in e.record.metrics for e in ok):
        return None
    windows = sorted({e.record.case.perplexity.window for e in ok if e.record.task == "perplexity"})
    compared_to = reference_model([e.record for e in ok if e.record.task == "latency"])
    rows = []
    for model in models:
        for variant in sorted({e.record.variant for e in ok if e.record.model == model}):
            mine = [e for e in ok if e.record.model == model and e.record.variant == variant]
            latency = [e for e in mine if e.record.task == "latency"]
            if not latency:
                continue
            first = latency[0].record.backend
            shape = first.attention_shape if first is not None else None  # recorded when the case ran
            ppl = {e.record.case.perplexity.window: e.record for e in mine if e.record.task == "perplexity"}
            for e in latency:
                r = e.record
                partner = _latency_record(entries, e.run, compared_to or "", variant, r)
                rows.append([Cell(model), Cell(variant), Cell(r.workload.label if r.workload else ""),
                             *_shape_cells(shape),
                             metric_cell(r, "kv_cache_bytes_per_token"),
                             metric_cell(r, "kv_cache_measured_bytes_per_token"), metric_cell(r, "tpot_ms"),
                             paired_or_marked(r, "tpot_vs_reference_model", "tpot_ms", partner),
                             *(metric_cell(ppl[w], "perplexity") if w in ppl else NA for w in windows)])
    return Table("Attention shape: KV heads, sliding window, KV bytes, TPOT, perplexity against context", [
        Column("model", left=True), Column("variant", left=True), Column("workload", left=True), Column("heads"),
        Column("KV heads"), Column("window"), Column("KV/token computed", "kv_cache_bytes_per_token"),
        Column("KV/token measured", "kv_cache_measured_bytes_per_token"), Column("TPOT ms", "tpot_ms"),
        Column(f"TPOT vs {compared_to}", "tpot_vs_reference_model"),
        *(Column(f"PPL @{w}", "perplexity") for w in windows)], rows,
        [("KV/token: bytes per cached token per sequence; computed = 2 x layers x KV heads x head dim x bytes per "
          "element, measured = what the cache held after the last generation / its tokens (a sliding-window cache "
          "holds the window only). PPL @w: perplexity with windows of w tokens (the suite's strides)."),
         _models_note(compared_to), *unpaired_notes(rows)])


def _shape_cells(shape: AttentionShape | None) -> list[Cell]:
    """Heads, KV heads and window of a model's recorded attention shape."""
    if shape is None:
        return [NA, NA, NA]
    return [Cell(fmt(shape.attention_heads)), Cell(fmt(shape.kv_heads)),
            Cell(fmt(shape.sliding_window) if shape.sliding_window else "full")]


def _models_note(compared_to: str | None) -> str:
    return (f"vs {compared_to}: the same variant and workload on {compared_to}, from the rounds both measured "
            f"interleaved (a suite with `interleave: models`): the median of the per-round ratios with its 95 % "
            f"bootstrap interval over processes, then rounds.")


# ---------------------------------------------------------------- models measured in the same rounds

def models_table(entries: list[Entry]) -> Table | None:
    """Each model's TTFT and TPOT and their ratios to the reference model, variant by variant, where the suite
    interleaved models (`interleave: models`)."""
    latency = [e for e in entries
               if e.record.ok and e.record.task == "latency" and e.record.case.interleave == "models"]
    if len({e.record.model for e in latency}) < 2:
        return None
    compared_to = reference_model([e.record for e in latency])
    models = list(dict.fromkeys(e.record.model for e in latency))
    latency.sort(key=lambda e: (e.run, e.record.workload.short if e.record.workload else "", e.record.variant,
                                models.index(e.record.model)))
    several_runs = len({e.run for e in latency}) > 1
    rows = []
    for e in latency:
        r = e.record
        partner = _latency_record(entries, e.run, compared_to or "", r.variant, r)
        rows.append(([Cell(e.run)] if several_runs else []) + [
            Cell(r.workload.label if r.workload else ""), Cell(r.variant), Cell(r.model),
            metric_cell(r, "ttft_ms"), metric_cell(r, "tpot_ms"),
            paired_or_marked(r, "ttft_vs_reference_model", "ttft_ms", partner),
            paired_or_marked(r, "tpot_vs_reference_model", "tpot_ms", partner)])
    return Table(f"Models measured in the same rounds: TTFT and TPOT against {compared_to}",
                 ([Column("run", left=True)] if several_runs else []) + [
                     Column("workload", left=True), Column("variant", left=True), Column("model", left=True),
                     Column("TTFT ms", "ttft_ms"), Column("TPOT ms", "tpot_ms"),
                     Column(f"TTFT vs {compared_to}", "ttft_vs_reference_model"),
                     Column(f"TPOT vs {compared_to}", "tpot_vs_reference_model")], rows,
                 [_models_note(compared_to), *unpaired_notes(rows)])


# ---------------------------------------------------------------- prefix caching

PREFIX_OPTIONS = ("prefix_caching", "prefix_reuse")  # vllm-server, llama-cpp-server


def prefix_cache_state(options: dict) -> bool | None:
    """Whether a server variant's prefix cache is on (True), off (False), or not set by its options (None)."""
    for key in PREFIX_OPTIONS:
        if key in options:
            return bool(options[key])
    return None


def speedup(off: list, on: list, seed: int = 0) -> tuple[float, float, float] | None:
    """(median TTFT off / median TTFT on, 95 % CI low, high) over the levels' successful requests."""
    from bench.gate.rule import Rule, Units, ratio_ci
    from bench.serving.results.aggregate import request_units

    units = [request_units(requests, "serve_ttft_ms") for requests in (on, off)]
    if any(u is None for u in units):
        return None
    (on_u, stat, _), (off_u, _, _) = units  # type: ignore[misc]
    cur, base = (Units(u, stat, np.zeros(len(u), dtype=int)) for u in (off_u, on_u))
    return ratio_ci(base, cur, Rule(), seed)


def prefix_cache_table(entries: list[Entry], samples_of: SamplesOf) -> Table | None:
    groups: dict[tuple, dict[bool, Entry]] = defaultdict(dict)
    for e in entries:
        r = e.record
        state = prefix_cache_state(r.case.options)
        if r.ok and r.serving and r.case.serving and r.case.serving.request.shared_prefix_tokens and state is not None:
            rest = tuple(sorted((k, str(v)) for k, v in r.case.options.items() if k not in PREFIX_OPTIONS))
            groups[(e.run, r.model, r.case.backend, rest)][state] = e
    rows = []
    for (_, model, server, _), pair in sorted(groups.items()):
        if set(pair) != {True, False}:
            continue
        raw = {state: samples_of(entry) for state, entry in pair.items()}
        levels = {state: {lv.key: lv for lv in (entry.record.serving.levels if entry.record.serving else [])}
                  for state, entry in pair.items()}
        for key in [k for k in levels[False] if k in levels[True]]:
            off_level, on_level = levels[False][key], levels[True][key]
            requests = {state: (samples.serving or {}).get(key, []) if samples else []
                        for state, samples in raw.items()}
            ratio = speedup(requests[False], requests[True])
            load = off_level.label if off_level.load == on_level.load else \
                f"off: {off_level.label}; on: {on_level.label}"  # a sweep's rates follow each server's own floor
            rows.append([Cell(server), Cell(key), Cell(load),
                         metric_cell(off_level, "serve_ttft_ms"), metric_cell(on_level, "serve_ttft_ms"),
                         Cell(f"{ratio[0]:.3f}x", f"[{ratio[1]:.3f}, {ratio[2]:.3f}]") if ratio else NA,
                         metric_cell(on_level, "serve_prefix_cache_hit_rate"),
                         metric_cell(off_level, "serve_tpot_ms"), metric_cell(on_level, "serve_tpot_ms")])
    if not rows:
        return None
    return Table("Prefix caching: the same server, shared-prefix requests, its prefix cache off and on", [
        Column("server", left=True), Column("level", left=True), Column("load", left=True),
        Column("TTFT ms, off", "serve_ttft_ms"), Column("TTFT ms, on", "serve_ttft_ms"),
        Column("TTFT speedup (off / on)"), Column("hit rate (on)", "serve_prefix_cache_hit_rate"),
        Column("TPOT ms, off", "serve_tpot_ms"), Column("TPOT ms, on", "serve_tpot_ms")], rows,
        [("Speedup: median TTFT with the cache off / with it on; interval: 95 % bootstrap over the requests of each "
          "level, resampled independently. Hit rate: the server's own counters, where it exposes them.")])


# ---------------------------------------------------------------- static vs dynamic batching (plot)

def static_batch_points(entries: list[Entry], model: str) -> list[tuple[str, float, float, float]]:
    """(label, output tok/s, TTFT p50 ms, TPOT p50 ms) of each ok latency case of `model`, the offline static batch."""
    points = []
    for e in entries:
        r = e.record
        if r.model != model or r.task != "latency" or not r.ok or r.workload is None:
            continue
        e2e, ttft, tpot = (r.value(m) for m in ("e2e_ms", "ttft_ms", "tpot_ms"))
        if e2e is None or ttft is None or tpot is None:
            continue
        points.append((f"{r.variant}, batch {r.workload.batch_size}",
                       r.workload.batch_size * r.workload.new_tokens / (e2e / 1e3), ttft, tpot))
    return points


def _load_order(level) -> float:
    """sync (one user) first, then the sweep's rates, then the throughput level, then the suite's own levels."""
    key = level.key or ""
    if key == "sync":
        return 0
    if key.startswith("sweep-") and key[6:].isdigit():
        return int(key[6:])
    return 1000 if key == "throughput" else 2000


def batching_plots(entries: list[Entry], several_runs: bool) -> list:
    from bench.report.plots import Plot, _plt, _png

    series: dict[tuple[str, str], list] = defaultdict(list)
    for entry, level in serving_levels(entries):
        if level.status in ("ok", "stopped") and level.value("serve_output_tok_s"):
            label = f"{entry.run} · {entry.record.variant}" if several_runs else entry.record.variant
            series[(entry.record.model, label)].append(level)
    plots = []
    for model in sorted({m for m, _ in series}):
        static = static_batch_points(entries, model)
        if not static:
            continue  # the serving curves show servers alone; this plot is for runs that also ran the offline batch
        plt, _ = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for (m, label), levels in sorted(series.items()):
            if m != model:
                continue
            levels = sorted(levels, key=_load_order)
            xs = [lv.value("serve_output_tok_s") for lv in levels]
            for ax, metric in zip(axes, ("serve_ttft_ms", "serve_tpot_ms")):
                ax.plot(xs, [lv.value(metric) or float("nan") for lv in levels], marker="o", label=label)
        for label, x, ttft, tpot in static:
            for ax, y in zip(axes, (ttft, tpot)):
                ax.scatter([x], [y], marker="*", s=140, zorder=3, label=label)
                ax.annotate(label.rsplit(" ", 1)[-1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for ax, metric in zip(axes, ("TTFT", "TPOT")):
            ax.set_xlabel("output tokens/s (all requests)")
            ax.set_ylabel(f"{metric} p50 (ms) ↓ better")
            ax.set_yscale("log")
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=4,
                   bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.28)
        name = model.rstrip("/").split("/")[-1]
        plots.append(Plot(f"batching-{name}", f"{name}: static vs dynamic batching, latency against throughput",
                          "What does batching buy in throughput, and what does it cost each request in latency?",
                          "Lines: each server variant's load levels in order of load (one user, the sweep's rates, "
                          "the throughput level, then the suite's levels), median over the level's requests. Stars: "
                          "the offline static batch (latency task, batch size N, no server): N x new tokens / the "
                          "batch's e2e, its TTFT and TPOT medians.", _png(fig),
                          ("serve_output_tok_s", "serve_ttft_ms", "serve_tpot_ms", "ttft_ms", "tpot_ms")))
    return plots
