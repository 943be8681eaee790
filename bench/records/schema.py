"""The records bench writes, one typed model per file, and the history of their format.

    results/<run-id>/run.json           RunMeta      (its format_version says how to read the whole run)
    results/<run-id>/cases.jsonl        CaseRecord   one line per finished case (ok, failed or skipped)
    results/<run-id>/samples/<id>.json  RawSamples   raw per-token stamps and per-repetition samples
    results/<run-id>/cases/<id>.json    CaseSpec     the case as handed to its worker process

Format history (FORMAT_VERSION is what this code writes; `bench.records.upgrade` reads older runs):

- 1 (bench 0.1.0, up to commit 3ee83e2): run.json has no format_version. A case record is the case's
  fields flattened next to status and results; `metrics` mixes metric values with details
  (stop_reason, window, stride, repetitions, `*_ci` pairs); `backend` is a free-form dict; the
  reference variant and peak bandwidth sit in a grab-bag `extra`; the profile is `profile_summary`.
- 2: run.json has `format_version`, the suite's `reference` and `regression` settings and a hash of
  the suite file. A record nests its `case` (CaseSpec, reference included), keeps only metrics
  registered in bench/metrics.py in `metrics` (a Summary, an Estimate with its interval, or a
  number), task details in `latency` / `perplexity`, a typed `backend` description and `profile`.

Settings shared by suites and records (workload, repetitions, perplexity, profile) are defined here,
so reading a run never needs the suite's backends, or even its schema, to still exist.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.core.description import BackendDescription

FORMAT_VERSION = 2

Status = Literal["ok", "failed", "skipped"]
Task = Literal["latency", "perplexity"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- settings (suites and records)

class _Settings(BaseModel):
    """Settings are finite: `.inf` is not a timeout, a threshold or a target."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Workload(_Record):
    """One point of a latency workload grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int
    prompt_tokens: int
    new_tokens: int

    @property
    def label(self) -> str:
        """The one human-readable name of a workload (report headings, plots, history)."""
        return f"batch {self.batch_size}, prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens"

    @property
    def short(self) -> str:
        """The compact name (case ids, plot legends, history keys)."""
        return f"b{self.batch_size}-p{self.prompt_tokens}-n{self.new_tokens}"


class Repetitions(_Settings):
    warmup: int = Field(2, ge=0, description="untimed generations before measuring")
    min: int = Field(6, ge=1, description="at least this many measured repetitions")
    max: int = Field(50, ge=1, description="stop after this many measured repetitions")
    max_time_s: float = Field(20.0, gt=0, description="stop once measuring took this long")
    ci_target: float = Field(0.02, gt=0, description="stop when the 95% CI of each median is within +-this")
    ci_level: float = Field(0.95, gt=0, lt=1)


class PerplexitySettings(_Settings):
    text: str = Field("stdlib-heldout", description="'stdlib-heldout' (built in, offline), 'wikitext-2' or "
                      "'wikitext-103' (online, bench[datasets]), or a path to a UTF-8 text file")
    window: int = Field(256, ge=2, description="tokens per forward pass")
    stride: int = Field(128, ge=1, description="tokens the window advances by")
    max_tokens: int | None = Field(8192, ge=2, description="evaluate on the first N tokens (null: all)")


class ProfileSettings(_Settings):
    """Profiling of latency cases (bench/measure/profiling.py): a separate phase after measuring."""

    enabled: bool = Field(False, description="profile this suite's (or variant's) latency cases")
    warmup: int = Field(1, ge=0, description="profiler warm-up generations (traced, then discarded)")
    steps: int = Field(2, ge=1, description="profiled generations, one trace file each")
    decode_steps: int = Field(4, ge=0, description="decode steps traced after the prefill in each profiled "
                              "generation; the rest of the generation runs untraced (torch.profiler backends)")
    max_trace_mb: float = Field(20.0, gt=0, description="budget of trace bytes (compressed) per case: a trace that "
                                "would exceed it is dropped and profiling stops, with the reason recorded")
    record_shapes: bool = Field(False, description="record operator input shapes")
    profile_memory: bool = Field(False, description="record tensor allocations")
    with_stack: bool = Field(False, description="record Python stacks (large traces)")
    top: int = Field(10, ge=1, description="operators listed in the report")


class RegressionSettings(_Settings):
    """Thresholds of `bench compare`: a change smaller than its threshold is never a regression."""

    threshold: float = Field(0.05, gt=0, description="default relative change that counts (0.05 = 5 %)")
    metrics: dict[str, float] = Field(default_factory=dict, description="per-metric thresholds, e.g. ttft_ms: 0.10")
    cases: dict[str, float] = Field(default_factory=dict, description="per-case thresholds (case id or variant label)")


# ---------------------------------------------------------------- the case

class CaseSpec(_Record):
    """One cell of a suite's matrix, as its worker receives it and as its record keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    suite: str
    model: str
    backend: str
    variant: str
    options: dict[str, Any] = Field(default_factory=dict)
    task: Task
    workload: Workload | None = None
    repetitions: Repetitions = Repetitions()
    perplexity: PerplexitySettings = PerplexitySettings()
    threads: int = 1
    timeout_s: float = 900
    interpreter: str | None = None
    profile: ProfileSettings | None = None  # set only on profiled latency cases
    # not part of the case's identity (its id): what its results are compared with
    reference: str | None = None
    peak_memory_bandwidth_gbs: float | None = None


# ---------------------------------------------------------------- metric values

class Summary(_Record):
    """A sampled metric's distribution: the raw samples are in samples/<id>.json, this derives from them."""

    n: int
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    ci_level: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class Estimate(_Record):
    """One estimated number with its confidence interval and how the interval was computed."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    method: str = ""


MetricValue = Summary | Estimate | int | float | None


class LatencyInfo(_Record):
    repetitions: int = Field(description="measured repetitions (warm-up excluded)")
    stop_reason: str = Field(description="ci_target_met, max_repetitions or max_time")
    measure_seconds: float = Field(description="wall time of the measured repetitions")


class PerplexityInfo(_Record):
    windows: int
    scored_tokens: int
    fed_tokens: int
    eval_token_ids_sha256: str | None = None
    n_eval_tokens: int | None = None
    quality_reference: str | None = None  # the variant quality was measured against
    quality_tokens: int | None = None


class ProfileSummary(_Record):
    """'Where the time goes' of a profiled latency case (bench/measure/profiling.py)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict)
    steps: int = 0
    trace_dir: str = ""
    phase: str = ""
    profiler: str = "none"
    reason: str | None = None
    error: str | None = None
    activities: list[str] | None = None
    step_wall_ms: float | None = None
    phases_ms: dict[str, float | None] | None = None
    ops_share_of_step: float | None = None
    n_operators: int | None = None
    ops_self_cpu_us: float | None = None
    ops_self_device_us: float | None = None
    shares: dict[str, dict[str, float] | None] | None = None
    top_ops: list[dict[str, Any]] | None = None
    generations_in_totals: int | None = None
    counters: dict[str, Any] | None = None
    files: list[str] = Field(default_factory=list)
    profile_seconds: float | None = None
    decode_steps: int | None = None  # decode steps traced after the prefill in each profiled generation
    generations_profiled: int | None = None
    trace_bytes: int | None = None  # bytes of trace files kept (compressed)
    trace_budget_bytes: int | None = None
    traces_dropped: str | None = None  # why the budget stopped profiling or dropped a trace


class CaseRecord(_Record):
    """One finished case: one line of cases.jsonl."""

    case: CaseSpec
    status: Status
    reason: str | None = None
    started_at: float
    wall_seconds: float
    worker_seconds: float | None = None
    python: str | None = None
    model_path: str | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    latency: LatencyInfo | None = None
    perplexity: PerplexityInfo | None = None
    backend: BackendDescription | None = None
    not_applicable: dict[str, str] = Field(default_factory=dict)
    profile: ProfileSummary | None = None
    output_tail: str | None = None

    # the case's identity, read often enough to deserve short names
    @property
    def id(self) -> str:
        return self.case.id

    @property
    def variant(self) -> str:
        return self.case.variant

    @property
    def model(self) -> str:
        return self.case.model

    @property
    def task(self) -> str:
        return self.case.task

    @property
    def workload(self) -> Workload | None:
        return self.case.workload

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def value(self, metric: str) -> float | None:
        """The number a report shows for `metric`: a summary's median, an estimate's value, or the scalar."""
        value = self.metrics.get(metric)
        if isinstance(value, Summary):
            return value.median
        if isinstance(value, Estimate):
            return value.value
        return None if value is None or isinstance(value, bool) else float(value)

    def summary(self, metric: str) -> Summary | None:
        value = self.metrics.get(metric)
        return value if isinstance(value, Summary) else None


# ---------------------------------------------------------------- raw samples and run metadata

class RawSamples(_Record):
    """Everything a latency case measured, before any summary: stamps per repetition, samples per metric."""

    stamps_ns: list[list[int]] = Field(default_factory=list, description="per repetition: ns from submit to each token")
    ttft_ms: list[float] = Field(default_factory=list)
    tpot_ms: list[float] = Field(default_factory=list)
    e2e_ms: list[float] = Field(default_factory=list)
    itl_ms: list[float] = Field(default_factory=list)

    def series(self, metric: str) -> list[float]:
        return list(getattr(self, metric, None) or [])


class Environment(_Record):
    """Fingerprint of the machine and software that produced a run (bench/run/environment.py)."""

    model_config = ConfigDict(extra="allow")

    python: str | None = None
    implementation: str | None = None
    platform: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    cpu_affinity: int | None = None
    gpus: list[dict[str, Any]] | str | None = None
    libraries: dict[str, str] = Field(default_factory=dict)
    thread_env: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    git_branch: str | None = None
    git_dirty: bool | None = None
    hostname: str | None = None


class RunMeta(_Record):
    """run.json: what the run is, where it came from, and the cases it was planned to run."""

    format_version: int = FORMAT_VERSION
    run_id: str
    suite_name: str
    suite_path: str = ""
    suite_sha256: str | None = None
    created_at: float
    environment: Environment = Environment()
    case_ids: list[str] = Field(default_factory=list)
    reference: str | None = None
    regression: RegressionSettings = RegressionSettings()
    command: list[str] = Field(default_factory=list)
    cwd: str = ""
