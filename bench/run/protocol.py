"""What a worker process hands back to the runner: one JSON file, written atomically before it exits.

A worker that crashes, is killed or times out writes nothing; the runner then records the case from
the exit status. The runner turns a WorkerResult into the case's CaseRecord and RawSamples.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bench.core.description import BackendDescription
from bench.records.schema import (
    LatencyInfo,
    MetricValue,
    PerplexityInfo,
    ProfileSummary,
    RawSamples,
    ServingInfo,
    Status,
)


class WorkerResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status
    reason: str | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    latency: LatencyInfo | None = None
    perplexity: PerplexityInfo | None = None
    backend: BackendDescription | None = None
    not_applicable: dict[str, str] = Field(default_factory=dict)
    profile: ProfileSummary | None = None
    serving: ServingInfo | None = None
    model_path: str | None = None
    worker_seconds: float | None = None
    python: str | None = None
    samples: RawSamples | None = None
