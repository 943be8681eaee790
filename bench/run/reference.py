"""A perplexity case's reference log-probabilities: found in the cache, or computed again when they left it.

A perplexity case that is not the reference compares with the reference's log-probabilities, an entry of
bench's cache (bench/measure/refcache.py) that the reference's record names (`reference_logprobs`). Before
its own backend loads and before its memory is measured, its worker looks the entry up. When it is not
there (evicted by the cache's size limit, a run resumed after a `bench cache clear`, a unit run on another
node of a Ray cluster, a run recorded before the entries existed), the worker runs the reference's
perplexity case again, from the spec in its record, in a worker process of its own (its interpreter,
threads and memory: this case's peak RSS does not include it), which stores the entry. That result is
not recorded: the reference's record stays as it was measured. The new entry must be the one the record
names (the same key: the same model bytes, token ids, settings, backend, options and versions), or, for a
run recorded before the entries existed, give the recorded perplexity; otherwise quality is not applicable,
with the reason, never compared with something else. The recomputation's output is in this case's log,
and its record says `reference_recomputed: true`.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from bench.exec.protocol import WorkerResult
from bench.measure import refcache
from bench.measure.quality import ReferenceLookup, reference_record
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, shown_value
from bench.run.handle import Budget, WorkerGone, WorkerProcess

SAME_PERPLEXITY = 1e-6  # relative: a run recorded without an entry key is checked by the perplexity it recorded


def _recompute(reference: CaseSpec, run_dir: Path) -> WorkerResult:
    """The reference's perplexity case run again in a worker process (its output goes to this process's log)."""
    run = RunDir(run_dir.parent, run_dir.name)
    sys.stdout.flush()
    worker = WorkerProcess.start(reference, run, run_dir / "tmp" / f"{reference.id}.recomputed.json", sys.stdout,
                                 Budget(math.inf))  # bounded by this case's own timeout
    try:
        result = worker.finish()
    except WorkerGone as gone:
        result = gone.result
    worker.result_file.unlink(missing_ok=True)
    return result


def _why_not_the_same(recorded: CaseRecord, key: str | None, result: WorkerResult) -> str | None:
    new_key = result.perplexity.reference_logprobs if result.perplexity else None
    if result.status != "ok":
        return f"computing them again failed: {result.reason}"
    if new_key is None:
        return f"computing them again stored none: {result.not_applicable.get('quality')}"
    if key is not None and new_key != key:
        return (f"computing them again gives entry {new_key}, not the recorded {key}: the reference model, its "
                f"token ids, its backend's options or versions changed since it was measured; measure it again "
                f"(a new run)")
    was, now = recorded.value("perplexity"), shown_value(result.metrics.get("perplexity"))
    if key is None and not (was is not None and now is not None and math.isclose(was, now, rel_tol=SAME_PERPLEXITY)):
        return f"computing them again gives perplexity {now}, not the recorded {was}: the reference changed"
    return None


def ensure_reference(case: CaseSpec, run_dir: Path | None) -> ReferenceLookup | None:
    """Where `case` (a perplexity case, not the reference) finds the reference's log-probabilities, computing them
    again if they are not in the cache; None for the reference itself or a case run outside `bench run`."""
    if run_dir is None or case.reference is None or case.variant == case.reference:
        return None
    found = reference_record(case, Path(run_dir))
    if isinstance(found, str):
        return ReferenceLookup(reason=found)
    key = found.perplexity.reference_logprobs if found.perplexity else None
    if key is not None and refcache.is_complete(refcache.entry_path(key)):
        return ReferenceLookup(key=key)
    gone = (f"entry {key} is not in the cache ({refcache.section()})" if key else
            "the reference's record names no cache entry (it could not store one, or it was measured before "
            "they were kept there)")
    print(f"bench: the reference's log-probabilities: {gone}; computing them again with case {found.id}",
          flush=True)
    result = _recompute(found.case, Path(run_dir))
    why = _why_not_the_same(found, key, result)
    if why is not None:
        return ReferenceLookup(reason=f"the reference's log-probabilities: {gone}; {why}")
    assert result.perplexity is not None
    print(f"bench: the reference's log-probabilities are in entry {result.perplexity.reference_logprobs} again",
          flush=True)
    return ReferenceLookup(key=result.perplexity.reference_logprobs, recomputed=True)
