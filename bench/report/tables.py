"""The table model every report renders: which columns a latency or perplexity table has, and the
text of each cell. Markdown and HTML draw the same tables from here; column headers come from the
metric registry (bench/metrics.py), so a header always names its metric and shown unit.

A cell is a main text and an optional interval ("2.002" and "[2.001, 2.004]"): Markdown prints
them on one line, HTML stacks them so wide tables still fit the page.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.metrics import METRICS
from bench.records.schema import CaseRecord, Estimate, Summary


@dataclass(frozen=True)
class Cell:
    text: str
    interval: str = ""

    def inline(self) -> str:
        return f"{self.text} {self.interval}" if self.interval else self.text


@dataclass
class Column:
    header: str
    metric: str | None = None  # the glossary entry the header links to
    left: bool = False  # text column (left-aligned)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    """A record and the run it belongs to (a report may show several runs side by side)."""

    run: str
    record: CaseRecord


NA = Cell("n/a")


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def metric_cell(record: CaseRecord, name: str) -> Cell:
    """The value of metric `name` as shown: scaled to its shown unit, with its interval when it has one."""
    metric, value = METRICS[name], record.metrics.get(name)
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
                r.task == entry.record.task and r.workload == entry.record.workload:
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


def latency_table(title: str, entries: list[Entry], several_runs: bool) -> Table:
    reference = _reference_name(entries)
    columns = _lead(several_runs) + [Column(METRICS[m].header, m) for m in LATENCY_METRICS] + [
        Column("n", "repetitions"),
        Column(f"decode tok/s vs {reference}", "decode_tok_s"), Column(f"TPOT vs {reference}", "tpot_ms"),
    ] + [Column(METRICS[m].header, m) for m in BANDWIDTH_METRICS]
    rows = []
    for entry in entries:
        r, ref = entry.record, _reference_of(entries, entry)
        rows.append(_lead_cells(entry, several_runs) + [metric_cell(r, m) for m in LATENCY_METRICS] + [
            Cell(str(r.latency.repetitions)) if r.latency else NA,
            ratio_cell(r.value("decode_tok_s"), ref.value("decode_tok_s") if ref else None),
            ratio_cell(r.value("tpot_ms"), ref.value("tpot_ms") if ref else None),
        ] + [metric_cell(r, m) for m in BANDWIDTH_METRICS])
    reasons = sorted({why for e in entries if (why := e.record.not_applicable.get("mbu"))})
    return Table(title, columns, rows, [f"MBU not applicable: {why}." for why in reasons])


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
            Cell(f"{settings.window} / {settings.stride}"),
            metric_cell(r, "eval_tok_s"), metric_cell(r, "peak_rss_bytes"),
        ] + [metric_cell(r, m) for m in QUALITY_METRICS] + [metric_cell(r, "delta_ppl")])
        if r.not_applicable.get("quality"):
            notes.append(f"{r.variant}: quality not applicable: {r.not_applicable['quality']}")
    return Table(title, columns, rows, notes)


def result_tables(entries: list[Entry], several_runs: bool = False) -> list[Table]:
    """One table per model x workload (latency), then per model (perplexity), of the ok cases."""
    groups: dict[tuple, list[Entry]] = defaultdict(list)
    for entry in entries:
        r = entry.record
        if r.ok:
            groups[(r.model, r.workload.label if r.workload else "perplexity")].append(entry)
    tables = []
    for (model, what), group in groups.items():
        name = Path(model).name
        if what == "perplexity":
            tables.append(perplexity_table(f"{name}: perplexity", group, several_runs))
        else:
            tables.append(latency_table(f"{name}: latency and throughput, {what}", group, several_runs))
    return tables


def what_ran(entries: list[Entry], several_runs: bool = False) -> Table:
    """Which mechanism each variant ran, from the backends' typed descriptions."""
    seen: dict[tuple[str, str], CaseRecord] = {}
    for entry in entries:
        if entry.record.ok and entry.record.backend is not None:
            seen.setdefault((entry.run, entry.record.variant), entry.record)
    columns = _lead(several_runs) + [Column("mechanism", left=True), Column("dtype", left=True),
                                     Column("device", left=True), Column("threads"),
                                     Column(METRICS["model_size_bytes"].header, "model_size_bytes")]
    rows = []
    for (run, variant), r in seen.items():
        b = r.backend
        assert b is not None
        rows.append(([Cell(run)] if several_runs else []) + [
            Cell(variant), Cell(b.mechanism), Cell(b.dtype), Cell(b.device), Cell(fmt(b.threads)),
            metric_cell(r, "model_size_bytes")])
    return Table("What ran", columns, rows)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(table: Table) -> str:
    """A table as Markdown, its notes below it."""
    body = md_table([c.header for c in table.columns], [[cell.inline() for cell in row] for row in table.rows])
    return "\n\n".join([body, *table.notes])
