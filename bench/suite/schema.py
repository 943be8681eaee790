"""The suite file's schema: what a YAML suite may say, validated by pydantic (unknown keys rejected).

A suite is a matrix: models x backend variants (backend + options; a list-valued option expands)
x tasks (each point of the latency workload grid, plus perplexity), and models x server variants
(`servers:`, bench/serving/servers.py) x the serving task, one case per model and server holding
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkloadGrid(_Strict):
    batch_size: int | list[int] = Field(1, description="sequences decoded together")
    prompt_tokens: int | list[int] = Field(64, description="prompt length in tokens")
    new_tokens: int | list[int] = Field(32, description="tokens generated per sequence (>= 2)")

    @field_validator("batch_size", "prompt_tokens", "new_tokens")
    @classmethod
    def _positive(cls, value, info):
        values = value if isinstance(value, list) else [value]
        floor = 2 if info.field_name == "new_tokens" else 1
        if not values or any(v < floor for v in values):
            raise ValueError(f"must be an integer >= {floor} (or a non-empty list of them)")
        return value

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
    @model_validator(mode="after")
    def _stride_fits(self):
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window}) or tokens go unscored")
        return self


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


class _Runnable(_Strict):
    """What backend and server variants share: a label, options (a list expands), an interpreter."""

    label: str | None = Field(None, description="name shown in reports (default: name[options])")
    options: dict[str, Any] = Field(default_factory=dict)
    interpreter: str | None = Field(None, description="Python interpreter for its cases (for a server: the one "
                                    "that runs the server): a path, or env:NAME for a managed env "
                                    "(python -m bench env create NAME)")

    @field_validator("interpreter")
    @classmethod
    def _known_env(cls, interpreter):
        from bench.run import envs

        try:
            return envs.check_interpreter(interpreter)
        except envs.EnvError as exc:
            raise ValueError(str(exc)) from None


class Variant(_Runnable):
    backend: str
    profile: ProfileSettings | None = Field(None, description="overrides the suite's profile settings for this variant")

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
        from bench.serving.servers import SERVERS

        if name not in SERVERS:
            raise ValueError(f"unknown server '{name}'; registered: {', '.join(sorted(SERVERS))}")
        return name


class Suite(_Strict):
    name: str
    description: str = ""
    models: list[str] = Field(min_length=1)
    backends: list[Variant] = Field(default_factory=list)
    servers: list[ServerVariant] = Field(default_factory=list, description="servers of the serving task")
    workloads: list[WorkloadGrid] = Field(default_factory=lambda: [WorkloadGrid()])
    tasks: list[Literal["latency", "perplexity", "serving"]] = ["latency", "perplexity"]
    serving: ServingSettings | None = Field(None, description="load levels, request shape, SLOs of serving cases")
    repetitions: SuiteRepetitions = SuiteRepetitions()
    perplexity: SuitePerplexity = SuitePerplexity()
    threads: int = Field(1, ge=1, description="torch intra-op threads (and OMP/MKL threads) per case")
    timeout_s: float = Field(900, gt=0, description="a case still running after this is killed and recorded")
    reference: str | None = Field(None, description="variant label every other variant is compared to")
    peak_memory_bandwidth_gbs: float | None = Field(
        None, gt=0, description="the device's peak memory bandwidth in GB/s, for MBU (known GPUs need none)")
    regression: SuiteRegression = SuiteRegression()
    profile: ProfileSettings = ProfileSettings()

    @model_validator(mode="after")
    def _something_to_run(self):
        if not self.backends and not self.servers:
            raise ValueError("give backends (latency, perplexity) or servers (serving), or both")
        if self.servers and "serving" not in self.tasks:
            raise ValueError("servers are listed but 'serving' is not in tasks")
        if "serving" in self.tasks and (not self.servers or self.serving is None):
            raise ValueError("the serving task needs servers: and a serving: section (levels or a sweep)")
        return self
