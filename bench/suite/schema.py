"""The suite file's schema: what a YAML suite may say, validated by pydantic (unknown keys rejected).

A suite is a matrix: models x backend variants (backend + options; a list-valued option expands)
x tasks (each point of the latency workload grid, plus perplexity). The settings a case carries
into its record (workload, repetitions, perplexity, profile, regression) are defined with the
records, in bench/records/schema.py, so a finished run is readable without this module.
"""
from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backends import UnknownBackend, backend_class
from bench.records.schema import PerplexitySettings, ProfileSettings, RegressionSettings, Repetitions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def at_least(value: int | list[int], floor: int) -> int | list[int]:
    """`value` (an int, or a non-empty list of ints: an axis) if every int is >= floor, else a ValueError."""
    values = value if isinstance(value, list) else [value]
    if not values or any(v < floor for v in values):
        raise ValueError(f"must be an integer >= {floor} (or a non-empty list of them)")
    return value


class WorkloadGrid(_Strict):
    batch_size: int | list[int] = Field(1, description="sequences decoded together")
    prompt_tokens: int | list[int] = Field(64, description="prompt length in tokens")
    new_tokens: int | list[int] = Field(32, description="tokens generated per sequence (>= 2)")

    @field_validator("batch_size", "prompt_tokens", "new_tokens")
    @classmethod
    def _positive(cls, value, info):
        return at_least(value, 2 if info.field_name == "new_tokens" else 1)

    def grid(self) -> list[dict[str, int]]:
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in self.model_dump().items()}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


class SuiteRepetitions(Repetitions):
    @model_validator(mode="after")
    def _ordered(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class SuitePerplexity(PerplexitySettings):
    """A case's perplexity settings, except that `window` (and `stride`) may be lists: one case per window."""

    # widened from the record's int: a suite may list several (per_case() gives each case its one)
    window: int | list[int] = Field(  # type: ignore[assignment]
        256, description="tokens per forward pass; a list gives one perplexity case per window, over the same tokens")
    stride: int | list[int] = Field(  # type: ignore[assignment]
        128, description="tokens the window advances by; with a list of windows, one stride for all or a list "
                         "of the same length (paired with the windows)")

    @field_validator("window", "stride")
    @classmethod
    def _sizes(cls, value, info):
        return at_least(value, 2 if info.field_name == "window" else 1)

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
        return self

    def per_case(self) -> list[PerplexitySettings]:
        """The settings of each perplexity case, in the order of the windows."""
        data = self.model_dump()
        return [PerplexitySettings(**{**data, "window": window, "stride": stride}) for window, stride in self.pairs()]


class SuiteRegression(RegressionSettings):
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
        if any(not t > 0 for t in value.values()):
            raise ValueError("thresholds must be > 0 (0.05 = 5 %)")
        return value


class Variant(_Strict):
    backend: str
    label: str | None = Field(None, description="name shown in reports (default: backend[options])")
    options: dict[str, Any] = Field(default_factory=dict)
    interpreter: str | None = Field(None, description="Python interpreter for this backend's cases: a path, "
                                    "or env:NAME for a managed env (python -m bench env create NAME)")
    profile: ProfileSettings | None = Field(None, description="overrides the suite's profile settings for this variant")

    @field_validator("backend")
    @classmethod
    def _registered(cls, name):
        try:
            backend_class(name)
        except UnknownBackend as exc:  # a KeyError; pydantic reports only ValueErrors as field errors
            raise ValueError(str(exc)) from None
        return name

    @field_validator("interpreter")
    @classmethod
    def _known_env(cls, interpreter):
        from bench.run import envs

        try:
            return envs.check_interpreter(interpreter)
        except envs.EnvError as exc:
            raise ValueError(str(exc)) from None


class Suite(_Strict):
    name: str
    description: str = ""
    models: list[str] = Field(min_length=1)
    backends: list[Variant] = Field(min_length=1)
    workloads: list[WorkloadGrid] = Field(default_factory=lambda: [WorkloadGrid()])
    tasks: list[Literal["latency", "perplexity"]] = ["latency", "perplexity"]
    repetitions: SuiteRepetitions = SuiteRepetitions()
    perplexity: SuitePerplexity = SuitePerplexity()
    threads: int = Field(1, ge=1, description="torch intra-op threads (and OMP/MKL threads) per case")
    timeout_s: float = Field(900, gt=0, description="a case still running after this is killed and recorded")
    reference: str | None = Field(None, description="variant label every other variant is compared to")
    peak_memory_bandwidth_gbs: float | None = Field(
        None, gt=0, description="the device's peak memory bandwidth in GB/s, for MBU (known GPUs need none)")
    regression: SuiteRegression = SuiteRegression()
    profile: ProfileSettings = ProfileSettings()
