"""What a worker process hands back to the runner: one JSON file, written atomically before it exits.

A worker that crashes, is killed or times out writes nothing; the runner then records the case from
the exit status. The runner turns a WorkerResult into the case's CaseRecord and RawSamples.
"""
from __future__ import annotations

from bench.records.schema import CaseOutcome, RawSamples


class WorkerResult(CaseOutcome):
    """A case's outcome as its worker hands it over, with the raw samples (which go to samples/<id>.json)."""

    samples: RawSamples | None = None


RESULT_UNWRITABLE = 74  # EX_IOERR: a worker's exit code when it could not write its result file (spawn.exit_reason)
