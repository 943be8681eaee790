"""The conformance matrix: model (architecture) x variant (backend) -> ok / skipped (why) / failed (why).

One cell folds every task of that model and variant (latency, perplexity, ...): failed if any case
failed, skipped if every case was skipped, else ok; an ok cell some of whose cases were skipped carries
the first skip's footnote ("perplexity skipped: why"). An ok cell with a perplexity also shows its
relative difference from the reference variant's perplexity on the same model and text, (PPL -
PPL_ref) / PPL_ref, the number the 1e-4 fp32 criterion of docs/models.md reads. Reasons are long, so
cells carry a footnote number and the table's notes list each distinct reason (its first line) once.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.presentation.table import Cell, Column, Table
from bench.records.schema import CaseRecord
from bench.report.tables import Entry


@dataclass(frozen=True)
class Verdict:
    status: str  # ok | skipped | failed | stopped
    reason: str = ""
    relative_ppl_difference: float | None = None


def verdicts(records: list[CaseRecord]) -> dict[tuple[str, str], Verdict]:
    """(model, variant) -> its verdict over all its cases."""
    grouped: dict[tuple[str, str], list[CaseRecord]] = {}
    for r in records:
        grouped.setdefault((r.model, r.variant), []).append(r)
    out = {}
    for key, group in grouped.items():
        bad = [r for r in group if r.status in ("failed", "stopped")]
        if bad:
            out[key] = Verdict(bad[0].status, f"{bad[0].task}: {_first_line(bad[0].reason)}")
        elif all(r.status == "skipped" for r in group):
            out[key] = Verdict("skipped", _first_line(group[0].reason))
        else:
            skipped = [r for r in group if r.status == "skipped"]
            partly = f"{skipped[0].task} skipped: {_first_line(skipped[0].reason)}" if skipped else ""
            out[key] = Verdict("ok", partly, _relative_ppl(records, group))
    return out


def _first_line(reason: str | None, limit: int = 300) -> str:
    """A reason's first line, capped (the report's failed-cases section keeps the whole text)."""
    line = (reason or "no reason recorded").strip().splitlines()[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _relative_ppl(records: list[CaseRecord], group: list[CaseRecord]) -> float | None:
    for r in group:
        ppl = r.value("perplexity") if r.ok and r.task == "perplexity" else None
        if ppl is None or r.variant == r.case.reference:
            continue
        for ref in records:
            if ref.ok and ref.task == "perplexity" and ref.model == r.model and ref.variant == r.case.reference \
                    and ref.case.perplexity == r.case.perplexity:
                ref_ppl = ref.value("perplexity")
                return (ppl - ref_ppl) / ref_ppl if ref_ppl else None
    return None


def matrix(entries: list[Entry]) -> list[Table]:
    """The matrix of one run's records (none for a single-model run: the result tables say it all)."""
    records = [e.record for e in entries]
    models = list(dict.fromkeys(r.model for r in records))
    variants = list(dict.fromkeys(r.variant for r in records))
    if len(models) < 2:
        return []
    found = verdicts(records)
    reasons: list[str] = []
    rows = []
    for model in models:
        row = [Cell(model)]
        for variant in variants:
            verdict = found.get((model, variant))
            if verdict is None:
                row.append(Cell("-"))
                continue
            text = verdict.status
            if verdict.relative_ppl_difference is not None:
                text += f" ({verdict.relative_ppl_difference:+.1e})"
            if verdict.reason:
                if verdict.reason not in reasons:
                    reasons.append(verdict.reason)
                text += f" [{reasons.index(verdict.reason) + 1}]"
            row.append(Cell(text))
        rows.append(row)
    reference = ", ".join(sorted({str(r.case.reference) for r in records if r.case.reference}))
    notes = [(f"ok (x): perplexity differs from the reference variant's ({reference or 'none'}) by x, relative "
             f"((PPL - PPL_ref) / PPL_ref); '-': not in the suite.")]
    notes += [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    columns = [Column("model", left=True)] + [Column(v) for v in variants]
    return [Table("Conformance: model x backend", columns, rows, notes)]
