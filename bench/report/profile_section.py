"""The "Where the time goes" section of a report, one per profiled latency case (bench/measure/profiling.py)."""
from __future__ import annotations

from pathlib import Path

from bench.core import markdown as md
from bench.measure.profiling import CATEGORIES
from bench.presentation.table import md_table
from bench.records.schema import CaseRecord, ProfileSummary


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def markdown_section(p: ProfileSummary, run_link: str) -> str:
    """'Where the time goes' for one profile; run_link: the run directory relative to the report."""
    link = f"{run_link}/{p.trace_dir}"
    traced = (f", the prefill and the first {p.decode_steps} decode step(s) of each traced"
              if p.decode_steps is not None else "")
    size = (f" ({p.trace_bytes / 1e6:.2f} MB of a {p.trace_budget_bytes / 1e6:g} MB budget)"
            if p.trace_bytes is not None and p.trace_budget_bytes else "")
    generations = p.generations_profiled if p.generations_profiled is not None else p.steps
    lines = [f"Profiler: {p.profiler}, {generations} profiled generation(s){traced}, {p.phase}. Trace files: "
             f"[{p.trace_dir}]({link}/){size}"
             + (f" (`tensorboard --logdir {run_link}/traces`, PyTorch Profiler tab)"
                if p.profiler == "torch.profiler" else "") + "."]
    if p.traces_dropped:
        lines.append(f"\nTrace budget: {p.traces_dropped}.")
    if p.error:
        lines.append(f"\nProfiling failed: {md.text(p.error)}")
    if p.reason:
        lines.append(f"\n{md.text(p.reason)}")
    phases = {k: v for k, v in (p.phases_ms or {}).items() if v is not None}
    if p.step_wall_ms or phases:
        parts = [f"{name} {ms:.4g} ms" for name, ms in phases.items()]
        traced_part = "the traced part of one generation" if p.decode_steps is not None else "one generation"
        wall = f"{traced_part} {p.step_wall_ms:.4g} ms under the profiler" if p.step_wall_ms else ""
        totals = (f" (totals over {p.generations_in_totals} generations, warm-up included)"
                  if p.generations_in_totals else " (profiled, so slower than measured)")
        lines.append("\n" + "; ".join(filter(None, [wall, ", ".join(parts)])) + totals
                     + (f"; {_pct(p.ops_share_of_step)} of it inside operators, the rest Python and "
                        "framework code between them" if p.ops_share_of_step else "") + ".")
    shares = p.shares or {}
    if any(shares.values()):
        rows = [[c] + [_pct((shares.get(k) or {}).get(c)) if shares.get(k) else "n/a" for k in ("cpu", "device")]
                for c in CATEGORIES]
        lines += ["", md_table(["category", "share of CPU self time", "share of device self time"], rows)]
    if p.top_ops:
        rows = [[md.code(op["name"]), op["category"], str(op["calls"]), _us(op["self_cpu_us"]),
                 _pct(op["self_cpu_share"]), _us(op["self_device_us"]), _pct(op["self_device_share"])]
                for op in p.top_ops]
        lines += ["", md_table(["operator", "category", "calls", "self CPU µs", "CPU share", "self device µs",
                                "device share"], rows)]
    return "\n".join(lines)


def profiled_sections(records: list[CaseRecord], run_link: str) -> list[tuple[str, str]]:
    """(title, body) for every ok case with a profile, in record order."""
    out = []
    for r in records:
        if r.ok and r.profile is not None and r.workload is not None:
            title = f"Where the time goes: {r.variant}, {Path(r.model).name}, {r.workload.label}"
            out.append((title, markdown_section(r.profile, run_link)))
    return out
