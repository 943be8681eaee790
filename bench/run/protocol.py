"""What a worker process hands back to the runner: one JSON file, written atomically before it exits.

A worker that crashes, is killed or times out writes nothing; the runner then records the case from
the exit status. The runner turns a WorkerResult into the case's CaseRecord and RawSamples.
"""
from __future__ import annotations

from bench.records.schema import CaseOutcome, RawSamples


class WorkerResult(CaseOutcome):
    """A case's outcome as its worker hands it over, with the raw samples (which go to samples/<id>.json) and
    what the runner needs beyond the record: the device's peak memory bandwidth for MBU (bench/measure/bandwidth.py),
    which a driven latency case can compute only once the runner has every process's samples."""

    samples: RawSamples | None = None
    peak_bandwidth_gbs: float | None = None
    peak_bandwidth_source: str | None = None  # where the peak comes from, or why it is unknown

    def outcome(self) -> dict:
        """The fields a CaseRecord keeps."""
        return self.model_dump(exclude={"samples", "peak_bandwidth_gbs", "peak_bandwidth_source"})
