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
  Additive within format 2 (older runs load unchanged; a bench older than an addition does not read a record
  that uses it, since the models forbid unknown fields): the
  `serving` task, `CaseSpec.serving` (ServingSettings), `CaseRecord.serving` (ServingInfo: one
  ServingLevel per load level) and `RawSamples.serving` (per-request stamps, one list per level).
  Also additive: `CaseRecord.machine` (Machine: the fingerprint of the machine that ran the case, with its
  `machine_id`), `RunMeta.shard` (ShardInfo: the run is one shard of a suite, `bench run --shard I/N`) and
  `RunMeta.merged_from` (the runs `bench merge` combined into this one), `CaseOutcome.energy` (EnergyInfo:
  the counters, idle baseline and phases behind the energy_* metrics, where a counter exists) and
  `RunMeta.model_override` (ModelOverride: `--model` replaced the suite's models; the snapshot suite.yaml holds
  the models run).
  Also additive: `MachineState.gpu_other_processes` (NVML: processes other than the measured one on a GPU) and
  `MachineState.run_queue_wait_share` (schedstat: the share of its ready time the measured process waited).
  Also additive: `CaseSpec.measure_memory_bandwidth` (the suite said `peak_memory_bandwidth_gbs: measured`) and
  the metrics `conversion_s` / `conversion_peak_rss_bytes` (what making a backend's converted files cost).
  Also additive: `PerplexitySettings.scoring` (which tokens perplexity scores: "all", the default and what
  every older run did, or "last-stride", llama-perplexity's protocol) and `PerplexityInfo.reference_logprobs` /
  `reference_recomputed` (the reference's log-probabilities live in bench's cache, not in the run directory:
  a run made before that has them in `reference/`, which nothing reads any more).
  Also additive: `CaseSpec.interleave` / `CaseSpec.reference_model` (the suite said `interleave: models`: a
  workload's latency cases of every model were measured in the same rounds) and the metrics
  `ttft_vs_reference_model` / `tpot_vs_reference_model` (the paired-round ratio to the same variant on the
  reference model); both fields are left out of a record (None) when the suite did not ask.
  Also additive: the typed parts of `BackendDescription` (bench/core/description.py): `kv_cache` (KVCacheInfo),
  `attention` (AttentionInfo), `attention_shape` (AttentionShape, the model's layout from its config.json, read
  when the case ran) and `peak_memory_bandwidth_source`. Records written before kept the first, second and last
  as keys of the free-form `details`; the loader moves them into the fields (bench/records/upgrade.py
  `typed_description`) and reads an older latency record's attention shape from its model directory, as reports
  did then.
  Also additive: `Environment.distributions` (every installed distribution and its version, which `bench compare`
  diffs: bench/gate/envdiff.py; a run from before has only the few `libraries`) and `ProfileSummary.ops` (every
  profiled operator's totals, OperatorTotal, which the operator diff between two runs reads: bench/gate/opdiff.py;
  a profile from before has only its `top_ops`).

Settings shared by suites and records (workload, repetitions, perplexity, profile, serving) are defined here,
so reading a run never needs the suite's backends, or even its schema, to still exist.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.core.description import BackendDescription

FORMAT_VERSION = 2

Status = Literal["ok", "failed", "skipped"]
Task = Literal["latency", "perplexity", "serving"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- settings (suites and records)

class _Settings(BaseModel):
    """Settings are strict and finite: `true` is not 1, `.inf` is not a timeout, a threshold or a target."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


FROZEN_SETTINGS = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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
    processes: int = Field(2, ge=1, description="fresh processes per variant: the CIs cover the variation between "
                           "processes, not only between repetitions in one")
    round_repetitions: int = Field(2, ge=1, description="repetitions per variant in each interleaved round")
    interleave: Literal["resident", "processes"] = Field(
        "resident", description="resident: the variants of one workload stay loaded side by side, each in its own "
        "process, and alternate round by round; processes: one short process per variant and round, for variants "
        "that cannot be resident together (GPU memory)")


class PerplexitySettings(_Settings):
    text: str = Field("stdlib-heldout", description="'stdlib-heldout' (built in, offline), 'wikitext-2' or "
                      "'wikitext-103' (online, bench[datasets]), or a path to a UTF-8 text file")
    window: int = Field(256, ge=2, description="tokens per forward pass")
    stride: int = Field(128, ge=1, description="tokens the window advances by")
    max_tokens: int | None = Field(8192, ge=2, description="evaluate on the first N tokens (null: all)")
    scoring: Literal["all", "last-stride"] = Field(
        "all", description="which tokens count: 'all' scores every token after the first once (Hugging Face's "
        "sliding-window protocol); 'last-stride' only each window's last `stride` tokens, windows starting every "
        "stride tokens while a token follows them (llama.cpp's llama-perplexity --ppl-stride)")


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


class LengthDistribution(_Record):
    """A token length drawn per request (seeded): uniform on [min, max], or normal(mean, std) clipped to it."""

    model_config = FROZEN_SETTINGS

    distribution: Literal["uniform", "normal"] = "uniform"
    min: int = Field(ge=1)
    max: int = Field(ge=1)
    mean: float | None = Field(None, description="normal only (default: the middle of [min, max])")
    std: float | None = Field(None, gt=0, description="normal only (default: a sixth of max - min)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class ServingRequest(_Record):
    """The shape of every request of a serving case."""

    model_config = FROZEN_SETTINGS

    endpoint: Literal["completions", "chat"] = Field("completions", description="/v1/completions or "
                                                     "/v1/chat/completions (the prompt as one user message)")
    input_tokens: int | LengthDistribution = Field(64, description="prompt length in tokens of the model's "
                                                   "tokenizer: a number, or {distribution, min, max, ...}")
    output_tokens: int = Field(32, ge=2, description="max_tokens, with the server's ignore-EOS / min-tokens "
                               "option where it has one, so every request generates exactly this many")
    prompts_file: str | None = Field(None, description="JSONL file of prompts ({\"prompt\": text} per line, "
                                     "optional \"output_tokens\"), used in turn instead of the evaluation text")
    text: str = Field("stdlib-heldout", description="evaluation text prompts are cut from (as perplexity.text)")
    shared_prefix_tokens: int | None = Field(None, ge=1, description="every prompt starts with the same prefix of "
                                             "this many tokens (a long system prompt), then its own suffix up to "
                                             "input_tokens (bench/serving/traffic/shared_prefix.py)")


class LoadLevel(_Record):
    """One load level: a closed loop of `concurrency` users, or an open loop of arrivals at `rate`."""

    model_config = FROZEN_SETTINGS

    mode: Literal["closed", "open"] = "closed"
    concurrency: int | None = Field(None, ge=1, description="closed: users; open: optional ceiling on requests "
                                    "in flight (sleep until scheduled, then wait for a free slot)")
    rate: float | None = Field(None, gt=0, description="open: mean arrivals per second")
    arrival: Literal["poisson", "gamma", "constant"] = Field("poisson", description="open: inter-arrival times")
    burstiness: float = Field(1.0, gt=0, description="gamma shape (1 = Poisson; < 1 burstier, > 1 steadier)")
    requests: int = Field(16, ge=1, description="requests sent at this level")
    max_seconds: float = Field(60.0, gt=0, description="the level stops sending after this; in-flight requests "
                               "get request_timeout_s more")
    key: str | None = Field(None, description="stable name the gate matches levels by (default: from the load)")

    @model_validator(mode="after")
    def _complete(self):
        if self.mode == "closed" and self.concurrency is None:
            raise ValueError("a closed-loop level needs concurrency (the number of users)")
        if self.mode == "open" and self.rate is None:
            raise ValueError("an open-loop level needs rate (requests per second)")
        return self

    @property
    def name(self) -> str:
        """The level's stable key: given, or c<N> (closed), r<rate>[-c<N>] (open)."""
        if self.key:
            return self.key
        if self.mode == "closed":
            return f"c{self.concurrency}"
        ceiling = f"-c{self.concurrency}" if self.concurrency else ""
        return f"r{self.rate:g}{ceiling}"


class SweepSettings(_Record):
    """GuideLLM's sweep: a synchronous level (latency floor), a throughput level (ceiling), rates between."""

    model_config = FROZEN_SETTINGS

    rates: int = Field(3, ge=0, description="open-loop levels evenly spaced between the two measured throughputs")
    arrival: Literal["poisson", "gamma", "constant"] = "poisson"
    burstiness: float = Field(1.0, gt=0)
    requests: int = Field(16, ge=1, description="requests per level")
    throughput_concurrency: int = Field(8, ge=2, description="users of the throughput level")
    max_seconds: float = Field(60.0, gt=0, description="per level")


class SLO(_Record):
    """Service-level objectives a request must meet to count towards goodput (all that are set)."""

    model_config = FROZEN_SETTINGS

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)


class RunawayLimits(_Record):
    """When a level stops early: too many errors, or latency far above the latency floor."""

    model_config = FROZEN_SETTINGS

    min_requests: int = Field(6, ge=1, description="finished requests before the limits apply")
    error_rate: float = Field(0.5, gt=0, le=1, description="stop when this share of finished requests failed")
    latency_factor: float = Field(20.0, gt=1, description="stop when the median e2e latency of the last "
                                  "min_requests requests exceeds this multiple of the first level's median")


class ServingSettings(_Record):
    """A serving case's settings: load levels (and/or a sweep), request shape, SLOs, limits, placement."""

    model_config = FROZEN_SETTINGS

    levels: list[LoadLevel] = Field(default_factory=list, description="run in order, after the sweep if any")
    sweep: SweepSettings | None = None
    request: ServingRequest = ServingRequest()
    slo: SLO = SLO()
    runaway: RunawayLimits = RunawayLimits()
    warmup_requests: int = Field(2, ge=0, description="sequential requests before the first level, not recorded")
    seed: int = Field(0, description="seeds prompt choice, lengths and arrival times")
    ready_timeout_s: float = Field(240.0, gt=0, description="a server not ready by then is a failed case")
    request_timeout_s: float = Field(60.0, gt=0, description="a request with no complete answer by then fails")
    pin: bool = Field(True, description="pin server and client to disjoint CPUs where there are >= 2")
    self_check: bool = Field(True, description="measure the client against the stub server first")

    @model_validator(mode="after")
    def _some_load(self):
        if not self.levels and self.sweep is None:
            raise ValueError("give load levels, a sweep, or both")
        keys = [level.name for level in self.levels]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two levels have the same key ({', '.join(keys)}); give them distinct `key`s")
        return self


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
    serving: ServingSettings | None = None  # set only on serving cases
    # not part of the case's identity (its id): what its results are compared with
    reference: str | None = None
    peak_memory_bandwidth_gbs: float | None = None
    measure_memory_bandwidth: bool = False  # suite `peak_memory_bandwidth_gbs: measured`: the worker measures it
    # suite `interleave: models` (latency cases only): one interleaved unit per workload with every model's variants
    # as members, each paired with the same variant on `reference_model` (None: units per model and workload)
    interleave: Literal["models"] | None = None
    reference_model: str | None = None


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
    ci_method: str | None = None  # how the median's interval was computed (None in format 1: order statistics)


class Estimate(_Record):
    """One estimated number with its confidence interval and how the interval was computed."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    method: str = ""


MetricValue = Summary | Estimate | int | float | None


def shown_value(value: MetricValue) -> float | None:
    """The number a report shows for a metric value: a summary's median, an estimate's value, or the scalar."""
    if isinstance(value, Summary):
        return value.median
    if isinstance(value, Estimate):
        return value.value
    return None if value is None or isinstance(value, bool) else float(value)


class MachineState(_Record):
    """What else the machine did while a case was measured (sampled around each of its rounds)."""

    cpus: int = Field(description="CPUs this process may use")
    other_cpu_load_mean: float = Field(description="CPUs busy with other processes, mean over the rounds")
    other_cpu_load_max: float = Field(description="the same, for the busiest round")
    cpu_mhz_min: float | None = None  # where the kernel reports CPU frequency
    cpu_mhz_max: float | None = None
    gpu_clock_mhz_min: float | None = None  # NVML, where there is a GPU
    gpu_utilization_max: float | None = None  # the whole GPU's, the measured process's own work included
    gpu_other_processes: int | None = None  # most processes other than the measured one seen on a GPU in a round
    run_queue_wait_share: float | None = Field(
        None, description="of the time the measured process's threads were ready to run, the share they waited "
        "for a CPU (schedstat), mean over the rounds; None where the kernel keeps no schedstat")
    contended: bool = Field(description="other processes kept at least half a CPU busy on average")


class LatencyInfo(_Record):
    repetitions: int = Field(description="measured repetitions (warm-up excluded)")
    stop_reason: str = Field(description="ci_target_met, max_repetitions or max_time")
    measure_seconds: float = Field(description="wall time of the measured repetitions")
    processes: int = Field(1, description="processes the repetitions came from")
    rounds: int | None = Field(None, description="interleaved rounds (None: measured alone, format 1)")
    interleave: str | None = Field(None, description="resident, processes, or None (measured alone)")
    machine: MachineState | None = None
    warnings: list[str] = Field(default_factory=list)


class PerplexityInfo(_Record):
    windows: int
    scored_tokens: int
    fed_tokens: int
    eval_token_ids_sha256: str | None = None
    n_eval_tokens: int | None = None
    quality_reference: str | None = None  # the variant quality was measured against
    quality_tokens: int | None = None
    # the cache entry of the reference's log-probabilities (bench/measure/refcache.py) this case wrote or reused
    # (the reference variant) or compared with (any other variant); None: quality not measured, or a run made
    # before the log-probabilities left the run directory (they were in reference/ there)
    reference_logprobs: str | None = None
    reference_recomputed: bool | None = None  # True: the entry had left the cache and this case computed it again


class OperatorTotal(_Record):
    """One operator's totals over a profile's generations (bench/measure/profiling.py `summarize_ops`)."""

    name: str
    calls: int
    self_cpu_us: float | None = None  # time inside the operator, not in operators it called, on the CPU
    self_device_us: float | None = None  # the same on the device, where traced


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
    ops: list[OperatorTotal] | None = None  # every operator, ranked as top_ops (None: a profile from before)
    generations_in_totals: int | None = None
    counters: dict[str, Any] | None = None
    files: list[str] = Field(default_factory=list)
    profile_seconds: float | None = None
    decode_steps: int | None = None  # decode steps traced after the prefill in each profiled generation
    generations_profiled: int | None = None
    trace_bytes: int | None = None  # bytes of trace files kept (compressed)
    trace_budget_bytes: int | None = None
    traces_dropped: str | None = None  # why the budget stopped profiling or dropped a trace


class ServingLevel(_Record):
    """One load level of a serving case, as measured."""

    key: str = Field(description="stable name the gate matches levels by")
    label: str = Field(description="human-readable load")
    load: LoadLevel = Field(description="the load as run (a sweep's rates filled in)")
    status: Literal["ok", "stopped", "failed", "skipped"] = "ok"
    reason: str | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    errors: dict[str, int] = Field(default_factory=dict, description="failed requests by kind")
    notes: list[str] = Field(default_factory=list)

    def value(self, metric: str) -> float | None:
        return shown_value(self.metrics.get(metric))


class ServingInfo(_Record):
    """A serving case: what server ran (version, command, log), how client and server were placed, the levels."""

    server: str
    endpoint: str | None = None
    version: str | None = None
    command: list[str] = Field(default_factory=list)
    log: str | None = None
    ready_seconds: float | None = None
    restarts: int = 0
    placement: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    client: dict[str, Any] = Field(default_factory=dict)
    levels: list[ServingLevel] = Field(default_factory=list)


class Machine(_Record):
    """The machine that ran a case (bench/run/environment.py `machine`): hardware, driver, software, host.

    `machine_id` is a short hash of the hardware part only (CPU model, logical CPUs, memory, GPU models and
    memory): two records with the same id were measured on the same kind of hardware, whatever the host's name,
    driver or library versions; records with different ids must never be compared as if alike."""

    model_config = ConfigDict(extra="allow")

    machine_id: str = Field(description="16 hex digits of sha256 over the hardware fields")
    hostname: str | None = None
    node: str | None = Field(None, description="the executor's name for the node (a Ray node id); None locally")
    cpu_model: str | None = None
    cpu_count: int | None = None
    memory_bytes: int | None = Field(None, description="physical memory (MemTotal)")
    architecture: str | None = None
    gpus: list[dict[str, Any]] = Field(default_factory=list, description="name, memory_total_bytes per GPU")
    gpu_driver: str | None = None
    platform: str | None = None
    python: str | None = None
    libraries: dict[str, str] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        """How reports name it: host, id, CPU and GPUs."""
        gpus = ", ".join(sorted({str(g.get("name")) for g in self.gpus})) or "no GPU"
        return f"{self.hostname or '?'} ({self.machine_id}: {self.cpu_model or '?'}, {gpus})"


class EnergyPhase(_Record):
    """One block of an energy measurement (bench/measure/energy.py): the counters' joules over it, idle included."""

    calls: int = Field(description="generate calls in the block (0: the idle baseline)")
    tokens: int = Field(description="tokens the per-token figure divides by, over all calls")
    seconds: float
    joules: dict[str, float] = Field(default_factory=dict, description="per counter, idle not subtracted")


class EnergyInfo(_Record):
    """How a case's energy per token was measured: the counters, the idle baseline subtracted, the two phases."""

    counters: list[str]
    idle: EnergyPhase
    idle_power_w: float = Field(description="summed over the counters; subtracted from both phases")
    prefill: EnergyPhase
    generation: EnergyPhase
    method: str = ""


class CaseOutcome(_Record):
    """What a case came to: what its worker reports (bench/exec/protocol.py) and its record keeps."""

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
    energy: EnergyInfo | None = None  # where an energy counter exists (bench/measure/energy.py)


class CaseRecord(CaseOutcome):
    """One finished case: one line of cases.jsonl."""

    case: CaseSpec
    started_at: float
    wall_seconds: float
    output_tail: str | None = None
    machine: Machine | None = None  # None: a record from before fingerprints (or a case never started)

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
        return shown_value(self.metrics.get(metric))

    def summary(self, metric: str) -> Summary | None:
        value = self.metrics.get(metric)
        return value if isinstance(value, Summary) else None


# ---------------------------------------------------------------- raw samples and run metadata

class RequestSample(_Record):
    """One request of a serving level: ns since the level started, token counts, error."""

    scheduled_ns: int
    sent_ns: int | None = None
    chunks_ns: list[int] = Field(default_factory=list, description="arrival of every content chunk")
    end_ns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = Field(None, description="generated tokens: the server's count (tokens_from) where it "
                                      "gives one, else the generated text re-tokenized with the model's tokenizer")
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    error_kind: str | None = None
    error: str | None = None
    retokenized_tokens: int | None = Field(None, description="the generated text re-tokenized (the cross-check)")
    tokens_from: str | None = Field(None, description="where output_tokens comes from: usage, length (max_tokens, "
                                    "finish_reason length), chunks (one token per chunk) or retokenized")


class RawSamples(_Record):
    """Everything a latency case measured, before any summary: stamps per repetition, samples per metric."""

    stamps_ns: list[list[int]] = Field(default_factory=list, description="per repetition: ns from submit to each token")
    ttft_ms: list[float] = Field(default_factory=list)
    tpot_ms: list[float] = Field(default_factory=list)
    e2e_ms: list[float] = Field(default_factory=list)
    itl_ms: list[float] = Field(default_factory=list)
    serving: dict[str, list[RequestSample]] | None = Field(None, description="serving: level key -> its requests")
    process: list[int] = Field(default_factory=list, description="per repetition: the process (0, 1, ...) it ran in")
    round: list[int] = Field(default_factory=list, description="per repetition: its interleaved round in that process")

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
    distributions: dict[str, str] | None = Field(
        None, description="every installed distribution, name -> version (None: a run from before bench recorded "
        "them; `libraries` then holds the few bench names)")

    @property
    def machine_id(self) -> str:
        """A short hash of the hardware (CPU model and count, GPUs and driver), not of the host's name: runs on
        the same kind of machine share it; the gate compares only cases measured on the same one."""
        gpus = self.gpus if isinstance(self.gpus, list) else []
        hardware = [self.cpu_model, self.cpu_count, [(g.get("name"), g.get("driver")) for g in gpus]]
        return hashlib.sha256(json.dumps(hardware, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ShardInfo(_Record):
    """A run that is one shard of a suite (`bench run --shard INDEX/COUNT`): which, and the whole suite's cases."""

    index: int = Field(ge=1)
    count: int = Field(ge=1)
    suite_case_ids: list[str] = Field(default_factory=list, description="every case of the suite, in order")

    @property
    def spec(self) -> str:
        return f"{self.index}/{self.count}"


class ModelOverride(_Record):
    """`bench run SUITE --model M` (repeatable): the models run instead of those the suite file lists."""

    models: list[str] = Field(description="the models given with --model, in order: what the run's cases run")
    suite_models: list[str] = Field(description="the models the suite file lists, which the run did not run")


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
    shard: ShardInfo | None = None  # set when the run is one shard of its suite
    merged_from: list[str] = Field(default_factory=list, description="runs `bench merge` combined into this one")
    model_override: ModelOverride | None = None  # set when --model replaced the suite's models
