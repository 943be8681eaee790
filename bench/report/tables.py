"""The report's tables: which columns a latency or perplexity table has, and the text of each cell, in the
table model (bench/presentation/table.py, which the gate's alerts share). Markdown and HTML draw the same
tables from here; column headers come from the metric registry (bench/metrics.py), so a header always names
its metric and shown unit.

Besides the latency and perplexity tables, `summary_tables` adds per model a quantization table
(method, bits per weight, weight bytes, perplexity, Δ PPL with its CI, KLD, top-1 agreement, decode
tok/s, all against the reference) when a variant is quantized and quality was measured, and a context
table (latency, memory and KV cache bytes per token at each prompt length) when the workloads vary the
prompt length.

A cell is a main text and an optional interval ("2.002" and "[2.001, 2.004]"): Markdown prints
them on one line, HTML stacks them so wide tables still fit the page. Numbers are shown by `fmt`
(bench/presentation/formatting.py).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.core import markdown as md
from bench.metrics import METRICS
from bench.presentation.formatting import fmt
from bench.presentation.table import NA, Cell, Column, Table
from bench.records.schema import CaseRecord, Estimate, Machine, MetricValue, ServingLevel, Summary


@dataclass(frozen=True)
class Entry:
    """A record and the run it belongs to (a report may show several runs side by side)."""

    run: str
    record: CaseRecord


def metric_cell(record: CaseRecord | ServingLevel, name: str) -> Cell:
    """The value of metric `name` as shown: scaled to its shown unit, with its interval when it has one."""
    return value_cell(name, record.metrics.get(name))


def value_cell(name: str, value: MetricValue) -> Cell:
    metric = METRICS[name]
    if isinstance(value, Summary):
        if not value.n:
            return NA
        low, high = (fmt(metric.shown(x), metric.digits) for x in (value.ci_low, value.ci_high))
        interval = f"[{low}, {high}]" if value.ci_low is not None and value.ci_high is not None else ""
        return Cell(fmt(metric.shown(value.median), metric.digits), interval)
    if isinstance(value, Estimate):
        interval = (f"[{metric.shown(value.ci_low):+.4g}, {metric.shown(value.ci_high):+.4g}]"
                    if value.ci_low is not None and value.ci_high is not None else "")
        return Cell(f"{metric.shown(value.value):+.4g}", interval)
    if value is None:
        return NA
    return Cell(fmt(metric.shown(float(value)), metric.digits))


def ratio_cell(value: float | None, reference: float | None) -> Cell:
    return NA if value is None or not reference else Cell(f"{value / reference:.3f}x")


def _reference_of(entries: list[Entry], entry: Entry) -> CaseRecord | None:
    """The ok record of the entry's reference variant in the same run, model and task/workload."""
    ref = entry.record.case.reference
    for other in entries:
        r = other.record
        if other.run == entry.run and r.ok and r.variant == ref and r.model == entry.record.model and \
                r.task == entry.record.task and r.workload == entry.record.workload and \
                (r.task != "perplexity" or r.case.perplexity == entry.record.case.perplexity):
            return r
    return None


def _reference_name(entries: list[Entry]) -> str:
    names = {e.record.case.reference for e in entries}
    return str(names.pop()) if len(names) == 1 else "reference"


def _lead(several_runs: bool) -> list[Column]:
    return ([Column("run", left=True)] if several_runs else []) + [Column("variant", left=True)]


def _lead_cells(entry: Entry, several_runs: bool) -> list[Cell]:
    return ([Cell(entry.run)] if several_runs else []) + [Cell(entry.record.variant)]


LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tok_s", "prefill_tok_s", "peak_rss_bytes", "load_s")
BANDWIDTH_METRICS = ("model_size_bytes", "achieved_bandwidth_gbs", "mbu")
ENERGY_METRICS = ("energy_prefill_j_per_token", "energy_decode_j_per_token", "energy_prefill_tok_per_j",
                  "energy_decode_tok_per_j", "energy_idle_w")  # columns only where a counter measured them
CONVERSION_METRICS = ("conversion_s", "conversion_peak_rss_bytes")  # "What ran", where some variant converted


def paired_cell(record: CaseRecord, paired: str, metric: str, ref: CaseRecord | None) -> Cell:
    """A ratio to the reference: from paired interleaved rounds with its interval, else of the two medians."""
    value = record.metrics.get(paired)
    if isinstance(value, Estimate):
        interval = (f"[{value.ci_low:.3f}, {value.ci_high:.3f}]"
                    if value.ci_low is not None and value.ci_high is not None else "")
        return Cell(f"{value.value:.3f}x", interval)
    return ratio_cell(record.value(metric), ref.value(metric) if ref else None)


def _repetitions_cell(record: CaseRecord) -> Cell:
    info = record.latency
    if info is None:
        return NA
    flag = "contended" if info.machine is not None and info.machine.contended else ""
    if info.processes <= 1 and not flag:
        return Cell(str(info.repetitions))
    return Cell(str(info.repetitions), detail=f"{info.processes} processes{', contended' if flag else ''}")


def latency_table(title: str, entries: list[Entry], several_runs: bool) -> Table:
    reference = _reference_name(entries)
    columns = _lead(several_runs) + [Column(METRICS[m].header, m) for m in LATENCY_METRICS] + [
        Column("n", "repetitions"),
        Column(f"decode tok/s vs {reference}", "decode_tok_s"), Column(f"TPOT vs {reference}", "tpot_vs_reference"),
        Column(f"TTFT vs {reference}", "ttft_vs_reference"),
    ] + [Column(METRICS[m].header, m) for m in BANDWIDTH_METRICS]
    energy = [m for m in ENERGY_METRICS if any(e.record.value(m) is not None for e in entries)]
    columns += [Column(METRICS[m].header, m) for m in energy]
    rows = []
    notes: list[str] = []
    for entry in entries:
        r, ref = entry.record, _reference_of(entries, entry)
        rows.append(_lead_cells(entry, several_runs) + [metric_cell(r, m) for m in LATENCY_METRICS] + [
            _repetitions_cell(r),
            ratio_cell(r.value("decode_tok_s"), ref.value("decode_tok_s") if ref else None),
            paired_cell(r, "tpot_vs_reference", "tpot_ms", ref),
            paired_cell(r, "ttft_vs_reference", "ttft_ms", ref),
        ] + [metric_cell(r, m) for m in (*BANDWIDTH_METRICS, *energy)])
        notes += [f"{r.variant}: {warning}." for warning in (r.latency.warnings if r.latency else [])]
    reasons = sorted({why for e in entries if (why := e.record.not_applicable.get("mbu"))})
    no_energy = sorted({why for e in entries if (why := e.record.not_applicable.get("energy"))})
    methods = sorted({s.ci_method for e in entries if (s := e.record.summary("tpot_ms")) and s.ci_method})
    return Table(title, columns, rows, [f"Intervals of the medians: {m}." for m in methods] + notes
                 + [f"MBU not applicable: {why}." for why in reasons]
                 + [f"Energy per token not measured: {why}." for why in no_energy])


QUALITY_METRICS = ("kld_mean", "kld_p99", "top1_agreement")


def perplexity_table(title: str, entries: list[Entry], several_runs: bool) -> Table:
    reference = _reference_name(entries)
    columns = _lead(several_runs) + [
        Column("perplexity", "perplexity"), Column(f"relative diff vs {reference}", "perplexity"),
        Column(METRICS["nll_mean"].header, "nll_mean"), Column("scored tokens", "perplexity"),
        Column("window / stride", "perplexity"), Column(METRICS["eval_tok_s"].header, "eval_tok_s"),
        Column(METRICS["peak_rss_bytes"].header, "peak_rss_bytes"),
    ] + [Column(METRICS[m].header, m) for m in QUALITY_METRICS] + [Column("Δ PPL [95 % CI]", "delta_ppl")]
    rows, notes = [], []
    for entry in entries:
        r, ref = entry.record, _reference_of(entries, entry)
        ppl, ref_ppl = r.value("perplexity"), ref.value("perplexity") if ref else None
        settings = r.case.perplexity
        rows.append(_lead_cells(entry, several_runs) + [
            metric_cell(r, "perplexity"),
            Cell(f"{ppl / ref_ppl - 1:+.3e}") if ppl is not None and ref_ppl else NA,
            metric_cell(r, "nll_mean"),
            Cell(str(r.perplexity.scored_tokens)) if r.perplexity else NA,
            Cell(f"{settings.window} / {settings.stride}" + ("" if settings.scoring == "all" else ", last stride")),
            metric_cell(r, "eval_tok_s"), metric_cell(r, "peak_rss_bytes"),
        ] + [metric_cell(r, m) for m in QUALITY_METRICS] + [metric_cell(r, "delta_ppl")])
        if r.not_applicable.get("quality"):
            notes.append(f"{r.variant}: quality not applicable: {r.not_applicable['quality']}")
    return Table(title, columns, rows, notes)


def machines(entries: list[Entry]) -> dict[str, Machine]:
    """The machines that ran the entries (CaseRecord.machine), by machine_id, in order of first appearance."""
    return {e.record.machine.machine_id: e.record.machine for e in entries if e.record.machine is not None}


def result_tables(entries: list[Entry], several_runs: bool = False) -> list[Table]:
    """One table per model x workload (latency), then per model (perplexity), of the ok cases; per machine too
    when the cases ran on several kinds of machine (their numbers and ratios are never mixed in one table)."""
    by_machine = len(machines(entries)) > 1
    groups: dict[tuple, list[Entry]] = defaultdict(list)
    for entry in entries:
        r = entry.record
        if r.ok and r.task != "serving":
            machine = r.machine.label if by_machine and r.machine is not None else ""
            groups[(r.model, r.workload.label if r.workload else "perplexity", machine)].append(entry)
    tables = []
    for (model, what, machine), group in groups.items():
        name = Path(model).name
        where = f", on {machine}" if machine else ""
        if what == "perplexity":
            tables.append(perplexity_table(f"{name}: perplexity{where}", group, several_runs))
        else:
            tables.append(latency_table(f"{name}: latency and throughput, {what}{where}", group, several_runs))
    return tables


def _bits_per_weight(record: CaseRecord) -> Cell:
    """Stored weight bytes x 8 / the weights the model stands for (scales and unquantized tensors included)."""
    b, size = record.backend, record.value("model_size_bytes")
    return Cell(f"{size * 8 / b.n_parameters:.2f}") if b is not None and b.n_parameters and size else NA


def _method(record: CaseRecord) -> Cell:
    """Backend and quantization method (else the weight type's first word: descriptions can be long)."""
    b = record.backend
    if b is None:
        return Cell(record.case.backend)
    name = re.split(r"[(:,]", b.quantization or b.dtype)[0].strip()
    return Cell(f"{record.case.backend}: {name if len(name) <= 32 else name.split(' ')[0]}")


def _kv_kind(record: CaseRecord) -> Cell:
    kv = record.backend.kv_cache if record.backend is not None else None
    return Cell(kv.kind) if kv is not None and kv.kind else NA


QUANTIZATION_METRICS = ("kld_mean", "top1_agreement")


def quantization_table(title: str, entries: list[Entry], several_runs: bool) -> Table | None:
    """One row per variant: method, bits, weight bytes, quality against the reference, decode speed.

    `entries` are one run's (or several runs') records of one model; quality is the variant's perplexity case
    at the first window the run evaluated, speed its first latency workload. None unless some variant is
    quantized (its description names a quantization method) and quality was measured."""
    perplexity = [e for e in entries if e.record.ok and e.record.task == "perplexity"]
    if not any(e.record.value("kld_mean") is not None for e in perplexity) or \
            not any(e.record.backend is not None and e.record.backend.quantization for e in perplexity):
        return None
    first_window = {e.run: e.record.case.perplexity for e in reversed(perplexity)}
    latency: dict[tuple[str, str], CaseRecord] = {}
    for e in entries:
        if e.record.ok and e.record.task == "latency":
            latency.setdefault((e.run, e.record.variant), e.record)
    reference = _reference_name(entries)
    columns = _lead(several_runs) + [
        Column("method", left=True), Column("KV cache", left=True), Column("bits/weight", "model_size_bytes"),
        Column(METRICS["model_size_bytes"].header, "model_size_bytes"), Column("perplexity", "perplexity"),
        Column(f"Δ PPL vs {reference} [95 % CI]", "delta_ppl"),
    ] + [Column(METRICS[m].header, m) for m in QUANTIZATION_METRICS] + [
        Column(METRICS["decode_tok_s"].header, "decode_tok_s"), Column(f"decode vs {reference}", "decode_tok_s")]
    rows = []
    for entry in perplexity:
        r = entry.record
        if r.case.perplexity != first_window[entry.run]:
            continue
        speed = latency.get((entry.run, r.variant))
        ref_speed = latency.get((entry.run, r.case.reference or ""))
        rows.append(_lead_cells(entry, several_runs) + [
            _method(r), _kv_kind(speed or r), _bits_per_weight(r), metric_cell(r, "model_size_bytes"),
            metric_cell(r, "perplexity"), metric_cell(r, "delta_ppl")]
            + [metric_cell(r, m) for m in QUANTIZATION_METRICS] + [metric_cell(speed, "decode_tok_s") if speed else NA,
               ratio_cell(speed.value("decode_tok_s") if speed else None,
                          ref_speed.value("decode_tok_s") if ref_speed else None)])
    window = next(iter(first_window.values()))
    note = (f"Quality on the perplexity case at window {window.window} / stride {window.stride} against {reference} "
            f"(same token ids); decode tok/s from each variant's first latency workload. bits/weight = stored weight "
            f"bytes x 8 / the model's parameter count (scales, zero points and unquantized tensors included).")
    return Table(title, columns, rows, [note])


CONTEXT_METRICS = ("ttft_ms", "tpot_ms", "peak_rss_bytes", "kv_cache_bytes_per_token",
                   "kv_cache_measured_bytes_per_token")


def context_table(title: str, entries: list[Entry], several_runs: bool) -> Table | None:
    """Latency, memory and KV cache bytes per token at each prompt length; None with fewer than two lengths."""
    rows_in = [e for e in entries if e.record.ok and e.record.task == "latency" and e.record.workload is not None]
    if len({e.record.workload.prompt_tokens for e in rows_in if e.record.workload}) < 2:
        return None
    rows_in.sort(key=lambda e: (e.run, e.record.variant, e.record.workload.batch_size if e.record.workload else 0,
                                e.record.workload.prompt_tokens if e.record.workload else 0))
    columns = _lead(several_runs) + [Column("prompt tokens"), Column("batch")]
    columns += [Column(METRICS[m].header, m) for m in CONTEXT_METRICS]
    columns.append(Column("measured / computed", "kv_cache_measured_bytes_per_token"))
    rows = []
    for entry in rows_in:
        r = entry.record
        assert r.workload is not None
        rows.append(_lead_cells(entry, several_runs) + [Cell(str(r.workload.prompt_tokens)),
                                                        Cell(str(r.workload.batch_size))]
                    + [metric_cell(r, m) for m in CONTEXT_METRICS]
                    + [ratio_cell(r.value("kv_cache_measured_bytes_per_token"), r.value("kv_cache_bytes_per_token"))])
    note = ("KV/token computed: from the model's config and the cache's nominal bits per element; measured: the "
            "bytes the backend's cache held after its last generation over the cached tokens (see the glossary).")
    return Table(title, columns, rows, [note])


def summary_tables(entries: list[Entry], several_runs: bool = False) -> list[Table]:
    """Per model: the quantization table (when a variant is quantized and quality was measured) and the
    context-length table (when the workloads vary the prompt length)."""
    by_model: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_model[entry.record.model].append(entry)
    out = []
    for model, group in by_model.items():
        name = Path(model).name
        out += [t for t in (quantization_table(f"{name}: quantization, quality and speed", group, several_runs),
                            context_table(f"{name}: cost against context length", group, several_runs)) if t]
    return out


def machine_tables(entries: list[Entry]) -> list[Table]:
    """The machines a report's cases ran on, when there are several (else the run's environment says it)."""
    found = machines(entries)
    if len(found) < 2:
        return []
    columns = [Column("machine id", left=True), Column("hosts", left=True), Column("CPU", left=True),
               Column("logical CPUs"), Column("memory GiB"), Column("GPUs", left=True), Column("GPU driver", left=True),
               Column("cases")]
    rows = []
    for machine_id, machine in found.items():
        ran = [e.record for e in entries if e.record.machine and e.record.machine.machine_id == machine_id]
        hosts = sorted({r.machine.hostname or "?" for r in ran if r.machine})
        gpus = ", ".join(str(g.get("name")) for g in machine.gpus) or "none"
        memory = fmt(machine.memory_bytes / (1 << 30), 3) if machine.memory_bytes else "n/a"
        rows.append([Cell(machine_id), Cell(", ".join(hosts)), Cell(machine.cpu_model or "n/a"),
                     Cell(fmt(machine.cpu_count)), Cell(memory), Cell(gpus), Cell(machine.gpu_driver or "n/a"),
                     Cell(str(len(ran)))])
    note = ("A run that spans several machines is reported per machine: each table above holds the cases of one "
            "machine_id (a hash of its hardware), and ratios compare variants measured on the same machine.")
    return [Table("Machines", columns, rows, [note])]


def what_ran(entries: list[Entry], several_runs: bool = False) -> Table:
    """Which mechanism each variant ran, from the backends' typed descriptions."""
    seen: dict[tuple[str, str], CaseRecord] = {}
    for entry in entries:
        if entry.record.ok and entry.record.backend is not None:
            seen.setdefault((entry.run, entry.record.variant), entry.record)
    columns = _lead(several_runs) + [Column("mechanism", left=True), Column("dtype", left=True),
                                     Column("device", left=True), Column("threads"),
                                     Column(METRICS["model_size_bytes"].header, "model_size_bytes")]
    converted = [m for m in CONVERSION_METRICS if any(e.record.value(m) is not None for e in entries)]
    columns += [Column(METRICS[m].header, m) for m in converted]
    rows = []
    for (run, variant), r in seen.items():
        b = r.backend
        assert b is not None
        rows.append(([Cell(run)] if several_runs else []) + [
            Cell(variant), Cell(b.mechanism), Cell(b.dtype), Cell(b.device), Cell(fmt(b.threads)),
            metric_cell(r, "model_size_bytes")] + [metric_cell(r, m) for m in converted])
    return Table("What ran", columns, rows)


# ---------------------------------------------------------------- serving (bench/serving)

SERVING_RATES = ("serve_request_rps", "serve_output_tok_s", "serve_total_tok_s", "serve_goodput_rps",
                 "serve_slo_fraction")
SERVING_LATENCIES = ("serve_ttft_ms", "serve_tpot_ms", "serve_itl_ms", "serve_e2e_ms")
SERVING_OPEN_LOOP = ("serve_ttft_sched_ms", "serve_e2e_sched_ms", "serve_schedule_lag_ms")
SERVING_OTHER = ("serve_tok_s_per_user", "serve_error_rate", "serve_server_rss_bytes", "serve_client_cpu")


def percentiles_cell(level: ServingLevel, name: str) -> Cell:
    """A latency's p50 / p90 / p99 over the level's requests, with the median's 95 % CI below."""
    value = level.metrics.get(name)
    if not isinstance(value, Summary) or not value.n:
        return NA
    metric = METRICS[name]
    text = " / ".join(fmt(metric.shown(x), metric.digits) for x in (value.median, value.p90, value.p99))
    return Cell(text, value_cell(name, value).interval)


def serving_levels(entries: list[Entry]) -> list[tuple[Entry, ServingLevel]]:
    return [(e, level) for e in entries if e.record.ok and e.record.serving
            for level in e.record.serving.levels]


def serving_level_table(title: str, rows_in: list[tuple[Entry, ServingLevel]], several_runs: bool,
                        open_loop: bool) -> Table:
    latencies = SERVING_LATENCIES + (SERVING_OPEN_LOOP if open_loop else ())
    columns = _lead(several_runs) + [Column("load", left=True), Column("status", left=True),
                                     Column("ok / sent", "serve_requests")]
    columns += [Column(METRICS[m].header, m) for m in SERVING_RATES]
    columns += [Column(f"{METRICS[m].header} p50 / p90 / p99", m) for m in latencies]
    columns += [Column(METRICS[m].header, m) for m in SERVING_OTHER]
    rows, notes = [], []
    for entry, level in rows_in:
        counts = f"{fmt(level.value('serve_ok_requests'))} / {fmt(level.value('serve_requests'))}"
        rows.append(_lead_cells(entry, several_runs) + [Cell(level.label), Cell(level.status), Cell(counts)]
                    + [metric_cell(level, m) for m in SERVING_RATES]
                    + [percentiles_cell(level, m) for m in latencies]
                    + [metric_cell(level, m) for m in SERVING_OTHER])
        who = f"{entry.record.variant}, {level.key}"
        if level.reason:
            notes.append(f"{who}: {level.status}: {level.reason}")
        if level.errors:
            notes.append(f"{who}: failed requests by kind: " + ", ".join(f"{k} {n}" for k, n in level.errors.items()))
        notes += [f"{who}: {note}" for note in level.notes]
        if level.value("serve_usage_mismatches"):
            notes.append(f"{who}: {fmt(level.value('serve_usage_mismatches'))} request(s) where the server's usage "
                         f"disagrees with the model's tokenizer")
    return Table(title, columns, rows, notes)


def serving_tables(entries: list[Entry], several_runs: bool = False) -> list[Table]:
    """One table per model and load level (its key): every server at that load, side by side."""
    groups: dict[tuple[str, str], list[tuple[Entry, ServingLevel]]] = defaultdict(list)
    for entry, level in serving_levels(entries):
        groups[(entry.record.model, level.key)].append((entry, level))
    tables = []
    for (model, key), rows in groups.items():
        open_loop = any(level.load.mode == "open" for _, level in rows)
        loads = sorted({level.label for _, level in rows})
        what = loads[0] if len(loads) == 1 else f"level {key}"
        tables.append(serving_level_table(f"{Path(model).name}: serving, {what}", rows, several_runs, open_loop))
    return tables


def servers_table(entries: list[Entry], several_runs: bool = False) -> Table:
    """What served: version, command, readiness, placement, and the client's self-check, per serving case."""
    columns = _lead(several_runs) + [Column("server", left=True), Column("version", left=True),
                                     Column(METRICS["serve_ready_s"].header, "serve_ready_s"),
                                     Column("restarts"), Column("placement", left=True),
                                     Column("client self-check", left=True), Column("details", left=True)]
    rows = []
    for entry in entries:
        info = entry.record.serving
        if info is None:
            continue
        check = info.client.get("cadence") or {}
        self_check = ("not run" if not info.client else
                      f"TTFT {fmt(check.get('ttft_ms'))} ms (stub {fmt(check.get('stub_ttft_ms'))}), ITL "
                      f"{fmt(check.get('itl_ms'))} ms (stub {fmt(check.get('stub_itl_ms'))}): "
                      f"{'passed' if check.get('passed') else 'NOT within 1 ms and 2 %'}; max "
                      f"{fmt(info.client.get('client_max_rps'))} req/s per client CPU second")
        details = "; ".join(f"{k}: {v}" for k, v in info.details.items())
        rows.append(_lead_cells(entry, several_runs) + [
            Cell(info.server), Cell(info.version or "n/a"), metric_cell(entry.record, "serve_ready_s"),
            Cell(str(info.restarts)), Cell(str(info.placement.get("how", ""))), Cell(self_check), Cell(details)])
    note = md.Markdown("Command lines and server logs are in each record's `serving` field "
                       "(`results/<run>/cases.jsonl`) and `logs/<case>.server.log`.")
    return Table("Servers", columns, rows, [note])
