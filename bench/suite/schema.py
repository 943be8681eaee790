"""The suite file's schema: what a YAML suite may say, validated by pydantic (unknown keys rejected).

A suite is a matrix: models x backend variants (backend + options; a list-valued option expands)
x tasks (each point of the latency workload grid, plus perplexity), and models x server variants
(`servers:`, bench/serving/launch/servers.py) x the serving task, one case per model and server holding
every load level of the `serving:` section. The settings a case carries
into its record (workload, repetitions, perplexity, profile, regression) are defined with the
records, in bench/records/schema.py, so a finished run is readable without this module.
"""
from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backends import UnknownBackend, backend_class
from bench.records.schema import (
    PerplexitySettings,
    ProfileSettings,
    RegressionSettings,
    Repetitions,
    ServingSettings,
)
from bench.run.cluster.settings import ClusterSettings

# Strict: YAML's `true` is not the integer 1, "2" is not 2; finite: `.inf` is not a timeout or a threshold.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
PLAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}$"  # a suite name names its run directory
# Axis bounds: far beyond any model these run, small enough that a typo fails here, not hours later.
AXIS_BOUNDS = {"batch_size": (1, 4096), "prompt_tokens": (1, 1 << 20), "new_tokens": (2, 1 << 20),
               "window": (2, 1 << 20), "stride": (1, 1 << 20)}


class _Strict(BaseModel):
    model_config = STRICT


def bounded_axis(value: int | list[int], field: str, distinct: bool = True) -> int | list[int]:
    """`value` (an int, or a non-empty list of ints, distinct unless told: an axis) if every int is within the
    field's bounds (AXIS_BOUNDS), else a ValueError."""
    values = value if isinstance(value, list) else [value]
    low, high = AXIS_BOUNDS[field]
    if not values or any(not low <= v <= high for v in values):
        raise ValueError(f"must be an integer from {low} to {high} (or a non-empty list of them)")
    if distinct and len(set(values)) != len(values):
        raise ValueError("a value is listed twice")
    return value


class WorkloadGrid(_Strict):
    batch_size: int | list[int] = Field(1, description="sequences decoded together")
    prompt_tokens: int | list[int] = Field(64, description="prompt length in tokens")
    new_tokens: int | list[int] = Field(32, description="tokens generated per sequence (>= 2)")

    @field_validator("batch_size", "prompt_tokens", "new_tokens")
    @classmethod
    def _bounded(cls, value, info):
        return bounded_axis(value, info.field_name)

    def grid(self) -> list[dict[str, int]]:
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in self.model_dump().items()}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


# Bounds of the repetition settings: far beyond any useful plan, small enough that a typo (processes: 1000 loads
# the model a thousand times; max: 10**35 never stops) fails in validate, not hours into a run.
REPETITION_BOUNDS = {"warmup": 10_000, "min": 1_000_000, "max": 1_000_000, "processes": 64,
                     "round_repetitions": 10_000, "max_time_s": 7 * 24 * 3600}
THRESHOLD_MAX = 10  # a relative threshold of 10 = 1000 %: the same bound as `bench compare --threshold`


class SuiteRepetitions(Repetitions):
    model_config = STRICT

    @field_validator(*REPETITION_BOUNDS)
    @classmethod
    def _bounded(cls, value, info):
        if value > REPETITION_BOUNDS[info.field_name]:
            raise ValueError(f"at most {REPETITION_BOUNDS[info.field_name]:,}".replace(",", "_"))
        return value

    @model_validator(mode="after")
    def _ordered(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class SuitePerplexity(PerplexitySettings):
    """A case's perplexity settings, except that `window` (and `stride`) may be lists: one case per window."""

    model_config = STRICT

    # widened from the record's int: a suite may list several (per_case() gives each case its one)
    window: int | list[int] = Field(  # type: ignore[assignment]
        256, description="tokens per forward pass; a list gives one perplexity case per window, over the same tokens")
    stride: int | list[int] = Field(  # type: ignore[assignment]
        128, description="tokens the window advances by; with a list of windows, one stride for all or a list "
                         "of the same length (paired with the windows)")

    @field_validator("window", "stride")
    @classmethod
    def _sizes(cls, value, info):
        return bounded_axis(value, info.field_name, distinct=info.field_name != "stride")  # strides may repeat

    def pairs(self) -> list[tuple[int, int]]:
        """(window, stride) of each perplexity case."""
        windows = self.window if isinstance(self.window, list) else [self.window]
        strides = self.stride if isinstance(self.stride, list) else [self.stride] * len(windows)
        return list(zip(windows, strides))

    @model_validator(mode="after")
    def _stride_fits(self):
        windows = self.window if isinstance(self.window, list) else [self.window]
        if isinstance(self.stride, list) and len(self.stride) != len(windows):
            raise ValueError(f"a list of strides pairs with the windows: {len(self.stride)} strides for "
                             f"{len(windows)} windows")
        for window, stride in self.pairs():
            if stride > window:
                raise ValueError(f"stride ({stride}) must be <= window ({window}) or tokens go unscored")
            if self.scoring == "last-stride" and stride >= window:
                raise ValueError(f"scoring last-stride scores each window's last `stride` tokens with the tokens "
                                 f"before them as context: stride ({stride}) must be < window ({window})")
        return self

    def per_case(self) -> list[PerplexitySettings]:
        """The settings of each perplexity case, in the order of the windows."""
        data = self.model_dump()
        return [PerplexitySettings(**{**data, "window": window, "stride": stride}) for window, stride in self.pairs()]


class SuiteRegression(RegressionSettings):
    model_config = STRICT

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        from bench.metrics import METRICS

        unknown = sorted(set(value) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric {', '.join(unknown)}; valid values: {', '.join(METRICS)}")
        return value

    @field_validator("metrics", "cases")
    @classmethod
    def _positive_thresholds(cls, value):
        if any(not 0 < t < THRESHOLD_MAX for t in value.values()):
            raise ValueError(f"thresholds must be > 0 and < {THRESHOLD_MAX} (0.05 = 5 %)")
        return value

    @field_validator("threshold")
    @classmethod
    def _bounded_threshold(cls, value):
        if not value < THRESHOLD_MAX:
            raise ValueError(f"must be < {THRESHOLD_MAX} (0.05 = 5 %), as `bench compare --threshold`")
        return value


class SuiteProfile(ProfileSettings):
    model_config = STRICT


class _Runnable(_Strict):
    """What backend and server variants share: a label, options (a list expands), an interpreter."""

    label: str | None = Field(None, description="name shown in reports (default: name[options])")
    options: dict[str, Any] = Field(default_factory=dict)
    interpreter: str | None = Field(None, description="Python interpreter for its cases (for a server: the one "
                                    "that runs the server): a path, or env:NAME for a managed env "
                                    "(python -m bench env create NAME)")

    @field_validator("label")
    @classmethod
    def _label(cls, label):
        if label is not None and not label.strip():
            raise ValueError("an empty label; leave it out to get backend[options]")
        if label is not None and ("/" in label or ".." in label or "\\" in label or "\0" in label):
            raise ValueError(f"{label!r}: a label may not contain '/', '\\', '..' or NUL (it names report rows and "
                             f"files)")
        return label

    @field_validator("options")
    @classmethod
    def _no_empty_lists(cls, options):
        empty = [k for k, v in options.items() if isinstance(v, list) and not v]
        if empty:
            raise ValueError(f"option {empty[0]!r} is an empty list: a list expands into one variant per value")
        return options

    @field_validator("interpreter")
    @classmethod
    def _known_env(cls, interpreter):
        from bench.exec import envs

        try:
            return envs.check_interpreter(interpreter)
        except envs.EnvError as exc:
            raise ValueError(str(exc)) from None


class Variant(_Runnable):
    backend: str
    profile: SuiteProfile | None = Field(None, description="overrides the suite's profile settings for this variant")
    models: list[str] | None = Field(None, min_length=1, description="run this variant on these of the suite's "
                                     "models only (default: all)")
    tasks: list[Literal["latency", "perplexity"]] | None = Field(None, min_length=1, description="run this variant "
                                                                 "for these of the suite's tasks only (default: all)")

    @field_validator("backend")
    @classmethod
    def _registered(cls, name):
        try:
            backend_class(name)
        except UnknownBackend as exc:  # a KeyError; pydantic reports only ValueErrors as field errors
            raise ValueError(str(exc)) from None
        return name


class ServerVariant(_Runnable):
    """A server the serving task starts (or an external endpoint), with its options."""

    server: str

    @property
    def backend(self) -> str:
        """The server kind: a serving case's `backend`."""
        return self.server

    @field_validator("server")
    @classmethod
    def _registered(cls, name):
        from bench.core.registry import UnknownName
        from bench.serving.launch.servers import server_class

        try:
            server_class(name)
        except UnknownName as exc:  # a KeyError; pydantic reports only ValueErrors as field errors
            raise ValueError(str(exc)) from None
        return name


class Suite(_Strict):
    name: str = Field(pattern=PLAIN_NAME, description="names its runs: letters, digits and . _ = + -")
    description: str = ""
    models: list[str] = Field(min_length=1)
    backends: list[Variant] = Field(default_factory=list)
    servers: list[ServerVariant] = Field(default_factory=list, description="servers of the serving task")
    workloads: list[WorkloadGrid] = Field(default_factory=lambda: [WorkloadGrid()], min_length=1)
    tasks: list[Literal["latency", "perplexity", "serving"]] = Field(["latency", "perplexity"], min_length=1)
    serving: ServingSettings | None = Field(None, description="load levels, request shape, SLOs of serving cases")
    repetitions: SuiteRepetitions = SuiteRepetitions()
    perplexity: SuitePerplexity = SuitePerplexity()
    threads: int = Field(1, ge=1, le=1024, description="torch intra-op threads (and OMP/MKL threads) per case")
    timeout_s: float = Field(900, gt=0, le=7 * 24 * 3600,
                             description="a case still running after this is killed and recorded")
    reference: str | None = Field(None, description="variant label every other variant is compared to")
    interleave: Literal["variants", "models"] = Field(
        "variants", description="what one interleaved unit of latency cases holds: variants (the default) are the "
        "variants of one model and workload; models: one unit per workload with every model's variants, measured "
        "in the same rounds, so a study that compares models gets paired-round ratios (to `reference_model`)")
    reference_model: str | None = Field(None, validate_default=True,
                                        description="with interleave: models, the model every other model is "
                                        "compared to, variant by variant (default: the first of `models`)")
    peak_memory_bandwidth_gbs: float | str | None = Field(
        None, description="the device's peak memory bandwidth in GB/s, for MBU (known GPUs need none); `measured`: "
        "each latency case measures the host's copy bandwidth after measuring (bench/measure/bandwidth.py)")
    regression: SuiteRegression = SuiteRegression()
    profile: SuiteProfile = SuiteProfile()
    cluster: ClusterSettings = Field(ClusterSettings(), description="where units run on a Ray cluster "
                                     "(bench run --executor ray); ignored by local runs")

    @field_validator("models")
    @classmethod
    def _named(cls, models):
        if any(not m.strip() for m in models):
            raise ValueError("an empty model name; give a built-in name, a local directory or a hub id")
        if len(set(models)) != len(models):
            raise ValueError("a model is listed twice")
        return models

    @field_validator("peak_memory_bandwidth_gbs")
    @classmethod
    def _bandwidth(cls, value):
        if isinstance(value, str) and value != "measured":
            raise ValueError(f"{value!r}: give the peak in GB/s (a number > 0) or 'measured'")
        if isinstance(value, float | int) and not value > 0:
            raise ValueError("must be greater than 0 (GB/s), or 'measured'")
        return value

    @field_validator("tasks")
    @classmethod
    def _once(cls, tasks):
        if len(set(tasks)) != len(tasks):
            raise ValueError("a task is listed twice")
        return tasks

    @field_validator("reference_model")
    @classmethod
    def _reference_model(cls, value, info):
        """Given only with interleave: models, one of the suite's models, and every variant that runs on some model
        runs on it too (the case each model's case is paired with)."""
        if info.data.get("interleave") != "models":
            if value is not None:
                raise ValueError("compares models measured in the same rounds: it needs `interleave: models`")
            return value
        models = info.data.get("models") or []
        if value is not None and value not in models:
            raise ValueError(f"{value!r} is not among the suite's models ({', '.join(models)})")
        reference = value or (models[0] if models else None)
        for variant in info.data.get("backends") or []:
            if reference is not None and variant.models is not None and reference not in variant.models:
                default = "" if value else " (the first of `models`, the default)"
                raise ValueError(f"variant {variant.label or variant.backend} runs on {variant.models} but not on the "
                                 f"reference model {reference}{default}: interleave: models pairs each model's case "
                                 f"with the same variant's on the reference model")
        return value

    @model_validator(mode="after")
    def _variant_models_known(self):
        for variant in self.backends:
            unknown = sorted(set(variant.models or []) - set(self.models))
            if unknown:
                raise ValueError(f"variant {variant.label or variant.backend}: models {unknown} are not among the "
                                 f"suite's models")
        return self
