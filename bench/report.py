"""Comparison report of one run: Markdown file in reports/<run-id>/ and a short terminal table.

Tables are built from the records in cases.jsonl (summaries derived from the raw samples at run
time); numbers are shown to 4 significant digits, the JSON keeps them whole. Every variant is
compared with the suite's reference variant on the same model and workload.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import jinja2

from bench.metrics import METRICS
from bench.profiling import profiled_sections
from bench.results import RunDir
from bench.suite import load_suite

MIB = 1024 * 1024


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_median(summary: dict | None) -> str:
    """median [CI low, CI high] of a summary dict."""
    if not summary or not summary.get("n"):
        return "n/a"
    ci = f" [{fmt(summary['ci_low'])}, {fmt(summary['ci_high'])}]" if summary.get("ci_low") is not None else ""
    return f"{fmt(summary['median'])}{ci}"


def ratio(value, reference) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.3f}x"


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _median(record: dict, metric: str):
    summary = record["metrics"].get(metric)
    return summary.get("median") if isinstance(summary, dict) else None


def _workload_key(record: dict) -> str:
    w = record["workload"]
    return f"batch {w['batch_size']}, prompt {w['prompt_tokens']} tokens, {w['new_tokens']} new tokens"


def _reference_record(records: list[dict], reference: str) -> dict | None:
    return next((r for r in records if r["variant"] == reference and r["status"] == "ok"), None)


def latency_table(records: list[dict], reference: str) -> str:
    ref = _reference_record(records, reference)
    headers = ["variant", "TTFT ms", "TPOT ms", "e2e ms", "decode tok/s", "prefill tok/s", "peak RSS MiB",
               "load s", "n", f"decode tok/s vs {reference}", f"TPOT vs {reference}", "weights MiB",
               "weights GB/s", "MBU"]
    rows = []
    for r in records:
        m = r["metrics"]
        rows.append([
            r["variant"], fmt_median(m["ttft_ms"]), fmt_median(m["tpot_ms"]), fmt_median(m["e2e_ms"]),
            fmt(m["decode_tok_s"]), fmt(m["prefill_tok_s"]), fmt(m["peak_rss_bytes"] / MIB), fmt(m["load_s"]),
            str(m["repetitions"]),
            ratio(m["decode_tok_s"], ref and ref["metrics"]["decode_tok_s"]),
            ratio(_median(r, "tpot_ms"), ref and _median(ref, "tpot_ms")),
            fmt(m["model_size_bytes"] / MIB) if m.get("model_size_bytes") else "n/a",
            fmt(m.get("achieved_bandwidth_gbs")), fmt(m.get("mbu")),
        ])
    reasons = sorted({(r.get("not_applicable") or {}).get("mbu") for r in records} - {None})
    return "\n\n".join([md_table(headers, rows), *(f"MBU not applicable: {why}." for why in reasons)])


def perplexity_table(records: list[dict], reference: str) -> str:
    ref = _reference_record(records, reference)
    headers = ["variant", "perplexity", f"relative diff vs {reference}", "NLL nats/token", "scored tokens",
               "window / stride", "eval tok/s", "peak RSS MiB", "KLD mean", "KLD p99", "top-1 agree",
               "Δ PPL [95 % CI]"]
    rows, notes = [], []
    for r in records:
        m = r["metrics"]
        diff = (f"{m['perplexity'] / ref['metrics']['perplexity'] - 1:+.3e}" if ref else "n/a")
        rows.append([r["variant"], fmt(m["perplexity"], 6), diff, fmt(m["nll_mean"], 6), str(m["scored_tokens"]),
                     f"{m['window']} / {m['stride']}", fmt(m["eval_tok_s"]), fmt(m["peak_rss_bytes"] / MIB),
                     fmt(m.get("kld_mean")), fmt(m.get("kld_p99")), fmt(m.get("top1_agreement")), _delta_ppl(m)])
        if (r.get("not_applicable") or {}).get("quality"):
            notes.append(f"- {r['variant']}: quality not applicable: {r['not_applicable']['quality']}")
    return "\n\n".join([md_table(headers, rows), *(["\n".join(notes)] if notes else [])])


def _delta_ppl(m: dict) -> str:
    if m.get("delta_ppl") is None:
        return "n/a"
    low, high = m["delta_ppl_ci"]
    return f"{m['delta_ppl']:+.4g} [{low:+.4g}, {high:+.4g}]"


def sections(records: list[dict], reference: str) -> list[tuple[str, str]]:
    """(title, table) per model x workload, then per model for perplexity."""
    ok = [r for r in records if r["status"] == "ok"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        key = (r["model"], _workload_key(r) if r["task"] == "latency" else "perplexity")
        groups[key].append(r)
    out = []
    for (model, what), group in groups.items():
        if what == "perplexity":
            out.append((f"{Path(model).name}: perplexity", perplexity_table(group, reference)))
        else:
            out.append((f"{Path(model).name}: latency and throughput, {what}", latency_table(group, reference)))
    return out


def load_run(results_dir: Path, run_id: str) -> tuple[dict, list[dict], str]:
    run = RunDir(results_dir, run_id)
    if not run.exists():
        raise FileNotFoundError(f"no run '{run_id}' in {results_dir} (expected {run.meta_path})")
    meta = run.meta()
    suite, cases = load_suite(run.suite_snapshot)
    order = {case_id: i for i, case_id in enumerate(meta["case_ids"])}
    records = sorted(run.records(), key=lambda r: order.get(r["id"], len(order)))
    reference = suite.reference or cases[0].variant
    return meta, records, reference


def render_markdown(meta: dict, records: list[dict], reference: str, run_link: str = ".") -> str:
    """run_link: the run's results directory relative to the report (for links to traces)."""
    template = jinja2.Environment(
        loader=jinja2.PackageLoader("bench", "templates"), keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    ).get_template("report.md.j2")
    mechanisms = {r["variant"]: r["backend"] for r in records if r["status"] == "ok"}
    return template.render(
        meta=meta, reference=reference, sections=sections(records, reference),
        problems=[r for r in records if r["status"] != "ok"], mechanisms=mechanisms,
        metrics=METRICS.values(), n_ok=sum(r["status"] == "ok" for r in records), n_total=len(meta["case_ids"]),
        missing=[c for c in meta["case_ids"] if c not in {r["id"] for r in records}],
        profiled=profiled_sections(records, run_link),
    )


def write_report(results_dir: Path, reports_dir: Path, run_id: str) -> Path:
    meta, records, reference = load_run(results_dir, run_id)
    out = Path(reports_dir) / run_id / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_link = os.path.relpath(Path(results_dir) / run_id, out.parent).replace(os.sep, "/")
    out.write_text(render_markdown(meta, records, reference, run_link))
    return out


def terminal_table(results_dir: Path, run_id: str) -> str:
    """A compact plain-text summary for the end of `bench run`."""
    _, records, _ = load_run(results_dir, run_id)
    headers = ["case", "status", "TTFT ms", "TPOT ms", "decode tok/s", "peak RSS MiB", "perplexity"]
    rows = []
    for r in records:
        m = r.get("metrics", {})
        ppl = fmt(m.get("perplexity"), 6) if r["task"] == "perplexity" else ""
        latency = r["task"] == "latency" and r["status"] == "ok"
        rows.append([
            f"{r['variant']} {_workload_key(r) if r['workload'] else 'perplexity'}",
            r["status"] + (f": {r['reason'][:60]}" if r.get("reason") else ""),
            fmt(_median(r, "ttft_ms")) if latency else "", fmt(_median(r, "tpot_ms")) if latency else "",
            fmt(m.get("decode_tok_s")) if latency else "",
            fmt(m["peak_rss_bytes"] / MIB) if "peak_rss_bytes" in m else "", ppl,
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([line.format(*headers), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows])
