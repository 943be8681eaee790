"""Declarative YAML suites: validation with file:line:field errors, and expansion into cases.

A suite is a matrix: models x backend variants (backend + options; a list-valued option expands)
x tasks (each workload of the latency grid, plus perplexity). Every cell is one `Case`, run in its
own process. Errors never raise a traceback at the user: `SuiteError` carries the file, the line
of the offending field, the field path, and the values that would have been valid.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backends import UnknownBackend, backend_class


class SuiteError(Exception):
    """A suite that cannot be run; str() is the message shown to the user (exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Workload(_Strict):
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

    def grid(self) -> list[dict]:
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in self.model_dump().items()}
        return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


class Repetitions(_Strict):
    warmup: int = Field(2, ge=0, description="untimed generations before measuring")
    min: int = Field(6, ge=1, description="at least this many measured repetitions")
    max: int = Field(50, ge=1, description="stop after this many measured repetitions")
    max_time_s: float = Field(20.0, gt=0, description="stop once measuring took this long")
    ci_target: float = Field(0.02, gt=0, description="stop when the 95% CI of each median is within +-this")
    ci_level: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Perplexity(_Strict):
    text: str = Field("stdlib-heldout", description="'stdlib-heldout' (built in, offline), 'wikitext-2' or "
                      "'wikitext-103' (online, bench[datasets]), or a path to a UTF-8 text file")
    window: int = Field(256, ge=2, description="tokens per forward pass")
    stride: int = Field(128, ge=1, description="tokens the window advances by")
    max_tokens: int | None = Field(8192, ge=2, description="evaluate on the first N tokens (null: all)")

    @model_validator(mode="after")
    def _stride_fits(self):
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window}) or tokens go unscored")
        return self


class Profile(_Strict):
    """Profiling of latency cases (bench/profiling.py): a separate phase after the timed measurement."""

    enabled: bool = Field(False, description="profile this suite's (or variant's) latency cases")
    warmup: int = Field(1, ge=0, description="profiler warm-up generations (traced, then discarded)")
    steps: int = Field(2, ge=1, description="profiled generations (the profiler's active steps)")
    record_shapes: bool = Field(False, description="record operator input shapes")
    profile_memory: bool = Field(False, description="record tensor allocations")
    with_stack: bool = Field(False, description="record Python stacks (large traces)")
    top: int = Field(10, ge=1, description="operators listed in the report")


class Regression(_Strict):
    """Thresholds of `bench compare`: a change smaller than its threshold is never a regression."""

    threshold: float = Field(0.05, gt=0, description="default relative change that counts (0.05 = 5 %)")
    metrics: dict[str, float] = Field(default_factory=dict, description="per-metric thresholds, e.g. ttft_ms: 0.10")
    cases: dict[str, float] = Field(default_factory=dict, description="per-case thresholds (case id or variant label)")

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
    profile: Profile | None = Field(None, description="overrides the suite's profile settings for this variant")

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
        from bench import envs

        try:
            return envs.check_interpreter(interpreter)
        except envs.EnvError as exc:
            raise ValueError(str(exc)) from None


class Suite(_Strict):
    name: str
    description: str = ""
    models: list[str] = Field(min_length=1)
    backends: list[Variant] = Field(min_length=1)
    workloads: list[Workload] = Field(default_factory=lambda: [Workload()])
    tasks: list[Literal["latency", "perplexity"]] = ["latency", "perplexity"]
    repetitions: Repetitions = Repetitions()
    perplexity: Perplexity = Perplexity()
    threads: int = Field(1, ge=1, description="torch intra-op threads (and OMP/MKL threads) per case")
    timeout_s: float = Field(900, gt=0, description="a case still running after this is killed and recorded")
    reference: str | None = Field(None, description="variant label every other variant is compared to")
    peak_memory_bandwidth_gbs: float | None = Field(
        None, gt=0, description="the device's peak memory bandwidth in GB/s, for MBU (known GPUs need none)")
    regression: Regression = Regression()
    profile: Profile = Profile()


@dataclass(frozen=True)
class Case:
    id: str
    suite: str
    model: str
    backend: str
    variant: str
    options: dict
    task: str
    workload: dict | None
    repetitions: dict
    perplexity: dict | None
    threads: int
    timeout_s: float
    interpreter: str | None = None
    extra: dict = field(default_factory=dict)
    profile: dict | None = None  # profile settings of a profiled latency case (bench/profiling.py)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- YAML with line numbers

def _line_index(node, path=(), index=None) -> dict[tuple, int]:
    index = {} if index is None else index
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), index)
    return index


def _line_of(index: dict[tuple, int], loc: tuple) -> int:
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in index:
            return index[tuple(loc[:end])]
    return 1


def _dotted(loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for listing valid field names)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _format_errors(path: Path, index, errors, root: type[BaseModel], prefix=()) -> str:
    lines = []
    for err in errors:
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, tuple(err["loc"]))
            valid = ", ".join(owner.model_fields) if owner else ""
            msg = f"unknown field '{loc[-1]}'" + (f"; valid fields: {valid}" if valid else "")
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path}:{_line_of(index, loc)}: {_dotted(loc)}: {msg}")
    return "\n".join(lines)


def _read(path: Path) -> tuple[dict, dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(f"{path}:{mark.line + 1 if mark else '?'}: YAML syntax error: {exc.problem}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}:1: a suite is a YAML mapping with at least 'name', 'models' and 'backends'")
    return data, _line_index(node)


# ---------------------------------------------------------------- expansion into cases

def _option_grid(options: dict) -> list[dict]:
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in options.items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]


def _variant_label(variant: Variant, options: dict, expanded: bool) -> str:
    if variant.label and not expanded:
        return variant.label
    shown = ",".join(f"{k}={v}" for k, v in options.items() if k in variant.options)
    base = variant.label or variant.backend
    return f"{base}[{shown}]" if shown else base


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")[-48:]


def _case_id(case_fields: dict) -> str:
    digest = hashlib.sha256(json.dumps(case_fields, sort_keys=True).encode()).hexdigest()[:8]
    task = case_fields["task"]
    if case_fields["workload"]:
        w = case_fields["workload"]
        task = f"b{w['batch_size']}-p{w['prompt_tokens']}-n{w['new_tokens']}"
    return f"{_slug(case_fields['variant'])}.{_slug(Path(case_fields['model']).name)}.{task}.{digest}"


def _profile_settings(suite: Suite, variant: Variant) -> dict:
    """The suite's profile settings with the variant's explicitly set fields on top."""
    own = variant.profile.model_dump(exclude_unset=True) if variant.profile else {}
    return {**suite.profile.model_dump(), **own}


def force_profile(data: dict, settings: dict) -> dict:
    """Suite data with profiling on for every variant (what `bench profile` runs); settings win."""
    data = copy.deepcopy(data)
    data["profile"] = {**(data.get("profile") or {}), **settings, "enabled": True}
    for variant in data.get("backends") or []:
        if isinstance(variant, dict) and isinstance(variant.get("profile"), dict):
            variant["profile"] = {**variant["profile"], **settings, "enabled": True}
    return data


def expand(suite: Suite) -> list[Case]:
    cases = []
    for model, variant in itertools.product(suite.models, suite.backends):
        grid = _option_grid(variant.options)
        for options in grid:
            label = _variant_label(variant, options, expanded=len(grid) > 1)
            tasks = [("latency", w) for wl in suite.workloads for w in wl.grid()] if "latency" in suite.tasks else []
            if "perplexity" in suite.tasks:
                tasks.append(("perplexity", None))
            for task, workload in tasks:
                fields = dict(
                    suite=suite.name, model=model, backend=variant.backend, variant=label, options=options,
                    task=task, workload=workload, repetitions=suite.repetitions.model_dump(),
                    perplexity=suite.perplexity.model_dump(), threads=suite.threads,
                    timeout_s=suite.timeout_s, interpreter=variant.interpreter,
                )
                profile = _profile_settings(suite, variant)
                if task == "latency" and profile["enabled"]:  # only then, so unprofiled case ids do not change
                    fields["profile"] = profile
                cases.append(Case(id=_case_id(fields), **fields))
    # Not part of a case's identity (its id): what its results are compared with (bench/quality.py,
    # bench/bandwidth.py). The reference defaults to the first variant, as in the report.
    shared = {"reference": suite.reference or (cases[0].variant if cases else None),
              "peak_memory_bandwidth_gbs": suite.peak_memory_bandwidth_gbs}
    return [dataclasses.replace(c, extra={**c.extra, **shared}) for c in cases]


def _check_options(path: Path, index, suite: Suite) -> None:
    for i, variant in enumerate(suite.backends):
        options_model = backend_class(variant.backend).Options
        for options in _option_grid(variant.options):
            try:
                options_model(**options)
            except ValidationError as exc:
                raise SuiteError(_format_errors(path, index, exc.errors(), options_model,
                                                prefix=("backends", i, "options"))) from None


def _check_reference(path: Path, index, suite: Suite, cases: list[Case]) -> None:
    labels = sorted({c.variant for c in cases})
    if suite.reference is not None and suite.reference not in labels:
        raise SuiteError(f"{path}:{_line_of(index, ('reference',))}: reference: '{suite.reference}' is not "
                         f"a variant of this suite; valid values: {', '.join(labels)}")


def load_suite(path: str | Path, profile: dict | None = None) -> tuple[Suite, list[Case]]:
    """Parse, validate and expand a suite file. Raises SuiteError with file:line: field: message.

    `profile`: force profiling on with these settings (see force_profile)."""
    path = Path(path)
    data, index = _read(path)
    if profile is not None:
        data = force_profile(data, profile)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_format_errors(path, index, exc.errors(), Suite)) from None
    _check_options(path, index, suite)
    cases = expand(suite)
    _check_reference(path, index, suite, cases)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise SuiteError(f"{path}: two cases are identical (same model, variant and task); remove the duplicate")
    return suite, cases
