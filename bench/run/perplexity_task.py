"""The perplexity task inside a case's worker (bench/run/worker.py): perplexity over the evaluation text, and the
quality scores against the reference's log-probabilities (stored by the reference variant, compared by the others).
Imported by the worker only for a perplexity case, so a latency worker starts without scipy and the quality code."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.core.timing import Clock
from bench.exec.protocol import WorkerResult
from bench.measure.perplexity import perplexity
from bench.measure.quality import QualitySession, ReferenceLookup, reference_parts
from bench.records.schema import CaseSpec
from bench.run.reference import ensure_reference

__all__ = ["ensure_reference", "perplexity_task"]


def _sha(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def _quality_session(case: CaseSpec, backend, model_path: str, ids_sha: str, run_dir: Path | None,
                     lookup: ReferenceLookup | None) -> QualitySession:
    """The reference stores its log-probabilities (keyed by what decides them), another case compares with them."""
    if case.reference is None or run_dir is None:
        return QualitySession(case, ids_sha, reason="no reference variant or run directory (case run outside "
                                                    "`bench run`)")
    if case.variant == case.reference:
        return QualitySession(case, ids_sha, parts=reference_parts(case, model_path, backend.describe(), ids_sha))
    return QualitySession(case, ids_sha, lookup=lookup)


def perplexity_task(case: CaseSpec, backend, ids: list[int], clock: Clock, run_dir: Path | None, model_path: str,
                     lookup: ReferenceLookup | None) -> WorkerResult:
    settings = case.perplexity
    ids = ids[: settings.max_tokens] if settings.max_tokens else ids
    quality = _quality_session(case, backend, model_path, _sha(ids), run_dir, lookup)
    try:
        result = perplexity(backend.token_logits, ids, settings.window, settings.stride, clock,
                            on_rows=quality.on_rows, scoring=settings.scoring)
        scores, why_not = quality.finish()
    finally:
        quality.close()
    info = result.info().model_copy(update={
        "eval_token_ids_sha256": _sha(ids), "n_eval_tokens": len(ids),
        "quality_reference": case.reference if scores else None, "quality_tokens": scores.tokens if scores else None,
        "reference_logprobs": quality.key, "reference_recomputed": quality.recomputed or None})
    return WorkerResult(status="ok", metrics={**result.metrics(), **(scores.metrics() if scores else {})},
                        perplexity=info, not_applicable={"quality": why_not} if why_not else {})
