"""A validated suite expanded into cases: variant labels, case ids, profiling forced on.

Serving cases (models x servers) hash their own identity: no workload, repetitions or perplexity
settings, and the `serving` settings instead; the identity of every other case is unchanged.

Case ids are stable: the same suite gives the same ids in every version of bench, so a baseline run
compares with a new one case by case. An id is `<variant>.<model>.<task>.<hash>`, the hash taken over
the case's identity (everything but what it is compared with).

`count_cases` counts the expansion arithmetically (a product of list lengths, nothing built), so a suite whose
lists multiply to more than MAX_CASES cases is refused before anything is expanded (docs/suites.md).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records.schema import CaseSpec, Repetitions, Workload
from bench.suite.schema import ServerVariant, Suite, Variant

# Settings added after format 1, with their defaults: left out of a case's identity while at their default,
# so a suite that does not use them keeps the case ids it had (and old baselines still match case by case).
ADDED_SETTINGS: dict[str, dict[str, Any]] = {
    "profile": {"decode_steps": 4, "max_trace_mb": 20.0},
    "repetitions": {"processes": 2, "round_repetitions": 2, "interleave": "resident"},
    "perplexity": {"scoring": "all"},
}


def _identity_settings(section: str, settings: dict[str, Any]) -> dict[str, Any]:
    added = ADDED_SETTINGS.get(section, {})
    return {k: v for k, v in settings.items() if not (k in added and v == added[k])}


def _option_axes(options: dict[str, Any], list_typed: frozenset[str]) -> dict[str, list]:
    """The values each option takes: a list-valued option expands, one whose own type is a list (`list_typed`,
    e.g. a server's extra_args) is one value when given a flat list and expands when given a list of lists."""
    def axis(key: str, value: Any) -> list:
        if key in list_typed:
            return value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
        return value if isinstance(value, list) else [value]

    return {k: axis(k, v) for k, v in options.items()}


def option_grid(options: dict[str, Any], list_typed: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One options dict per combination of the option axes (see _option_axes)."""
    axes = _option_axes(options, list_typed)
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]


def list_typed_options(variant: Variant | ServerVariant) -> frozenset[str]:
    """The options of a variant's backend or server whose declared type is a list (they do not expand)."""
    return _list_typed(isinstance(variant, ServerVariant), variant.backend)


@functools.cache
def _list_typed(server: bool, name: str) -> frozenset[str]:
    """list_typed_options by backend (or server) name: looked up once per name, not once per variant or case."""
    if server:
        from bench.serving.launch.servers import server_class

        model = server_class(name).Options
    else:
        from backends import backend_class

        model = backend_class(name).Options
    return frozenset(name for name, f in model.model_fields.items()
                     if f.annotation is list or typing.get_origin(f.annotation) is list)


def variant_grid(variant: Variant | ServerVariant) -> list[dict[str, Any]]:
    """The options of each variant a suite entry expands to (see option_grid)."""
    return option_grid(variant.options, list_typed_options(variant))


# The most cases `run` and `validate` expand a suite to unless told otherwise (--max-cases N): a suite of this
# many cases runs for days; one of 10**8 (a few lists of a few hundred values) would not fit in memory.
MAX_CASES = 100_000


@dataclass(frozen=True)
class Expansion:
    """How many cases one suite entry (backends[i] or servers[i]) expands to: the product of its factors,
    each (count, what multiplies: '100 values of options.dtype'), counted without building a case."""

    where: tuple[str, int]
    factors: tuple[tuple[int, str], ...]

    @property
    def cases(self) -> int:
        return math.prod(n for n, _ in self.factors)


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _latency_points(suite: Suite) -> tuple[int, str]:
    """(latency cases per variant and model, which workload lists multiply to them)."""
    sizes = []
    for w, workload in enumerate(suite.workloads):
        lists = {k: len(v) for k, v in workload.model_dump().items() if isinstance(v, list)}
        sizes.append((math.prod(lists.values()), f"workloads[{w}]: " + " x ".join(f"{n:,} {k}" for k, n in
                                                                                    lists.items())))
    listed = "; ".join(what for n, what in sizes if n > 1)
    return sum(n for n, _ in sizes), _plural(sum(n for n, _ in sizes), "latency workload point") + \
        (f" ({listed})" if listed else "")


def count_cases(suite: Suite) -> list[Expansion]:
    """What each backend and server entry expands to, arithmetically: the same count as len(expand(suite)),
    without building the cases (a suite of 10**8 cases is counted in microseconds, never expanded)."""
    out = []
    latency, latency_what = _latency_points(suite)
    windows = len(suite.perplexity.pairs())
    for i, variant in enumerate(suite.backends):
        models = sum(1 for m in suite.models if variant.models is None or m in variant.models)
        wanted = [task for task in suite.tasks if variant.tasks is None or task in variant.tasks]
        per_model = ([(latency, latency_what)] if "latency" in wanted else []) + \
            ([(windows, _plural(windows, "perplexity window"))] if "perplexity" in wanted else [])
        out.append(Expansion(("backends", i), ((models, _plural(models, "model")), *_option_factors(variant),
                                               (sum(n for n, _ in per_model),
                                                " + ".join(what for _, what in per_model) or "no task"))))
    if "serving" in suite.tasks and suite.serving is not None:
        out += [Expansion(("servers", i), ((len(suite.models), _plural(len(suite.models), "model")),
                                           *_option_factors(server))) for i, server in enumerate(suite.servers)]
    return out


def _option_factors(variant: Variant | ServerVariant) -> list[tuple[int, str]]:
    axes = _option_axes(variant.options, list_typed_options(variant))
    return [(len(values), f"{len(values):,} values of options.{key}") for key, values in axes.items()
            if len(values) > 1]


def variant_label(variant: Variant | ServerVariant, options: dict[str, Any], expanded: bool) -> str:
    if variant.label and not expanded:
        return variant.label
    shown = ",".join(f"{k}={v}" for k, v in options.items() if k in variant.options)
    base = variant.label or variant.backend
    return f"{base}[{shown}]" if shown else base


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")[-48:]


def case_id(identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    workload = identity["workload"]
    task = _workload_short(**workload) if workload else identity["task"]
    return f"{_slug(identity['variant'])}.{_model_slug(identity['model'])}.{task}.{digest}"


@functools.lru_cache(maxsize=4096)
def _workload_short(**point: int) -> str:
    return Workload(**point).short


@functools.lru_cache(maxsize=4096)
def _model_slug(model: str) -> str:
    return _slug(Path(model).name)


def _profile_settings(suite: Suite, variant: Variant) -> dict[str, Any]:
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


def _serving_identities(suite: Suite) -> list[dict[str, Any]]:
    """One serving case per model x server variant: it starts the server once and runs every load level."""
    if "serving" not in suite.tasks or suite.serving is None:
        return []
    serving = suite.serving.model_dump()
    identities = []
    for model, server in itertools.product(suite.models, suite.servers):
        grid = variant_grid(server)
        for options in grid:
            label = variant_label(server, options, expanded=len(grid) > 1)
            if server.interpreter:  # the server's Python; the worker (the client) runs in bench's own
                options = {**options, "interpreter": server.interpreter}
            identities.append({"suite": suite.name, "model": model, "backend": server.server, "variant": label,
                               "options": options, "task": "serving", "workload": None, "serving": serving,
                               "threads": suite.threads, "timeout_s": suite.timeout_s, "interpreter": None})
    return identities


def expand(suite: Suite) -> list[CaseSpec]:
    """Every case of the suite, in run order: model, then variant, then task."""
    identities = []
    repetitions = _identity_settings("repetitions", Repetitions(**suite.repetitions.model_dump()).model_dump())
    per_window = [_identity_settings("perplexity", settings.model_dump())  # one, unless window is a list
                  for settings in suite.perplexity.per_case()]
    perplexity = per_window[0]  # what latency cases carry (their prompts come from the same text)
    points = [point for workload in suite.workloads for point in workload.grid()]
    for model, variant in itertools.product(suite.models, suite.backends):
        if variant.models is not None and model not in variant.models:
            continue
        wanted = [task for task in suite.tasks if variant.tasks is None or task in variant.tasks]
        tasks: list[tuple[str, dict | None, dict]] = []
        if "latency" in wanted:
            tasks += [("latency", point, perplexity) for point in points]
        if "perplexity" in wanted:
            tasks += [("perplexity", None, settings) for settings in per_window]
        profile = _profile_settings(suite, variant)
        profiled = _identity_settings("profile", profile) if profile["enabled"] else None
        grid = variant_grid(variant)
        for options in grid:
            label = variant_label(variant, options, expanded=len(grid) > 1)
            for task, workload, settings in tasks:
                identity = {"suite": suite.name, "model": model, "backend": variant.backend, "variant": label,
                            "options": options, "task": task, "workload": workload, "repetitions": repetitions,
                            "perplexity": settings, "threads": suite.threads, "timeout_s": suite.timeout_s,
                            "interpreter": variant.interpreter}
                if task == "latency" and profiled is not None:  # only then, so unprofiled case ids do not change
                    identity["profile"] = profiled
                identities.append(identity)
    identities += _serving_identities(suite)
    reference = suite.reference or (identities[0]["variant"] if identities else None)
    stated = suite.peak_memory_bandwidth_gbs
    measured = stated == "measured"
    return [CaseSpec(id=case_id(identity), **identity, reference=reference,
                     peak_memory_bandwidth_gbs=None if measured else stated,
                     measure_memory_bandwidth=measured, **_interleaved_models(suite, identity["task"] == "latency"))
            for identity in identities]


def _interleaved_models(suite: Suite, latency: bool) -> dict[str, Any]:
    """`interleave: models` on a latency case (not part of its identity: the case ids stay those of the suite
    without it, so baselines still match): its unit holds every model, paired with `reference_model`."""
    if suite.interleave != "models" or not latency:
        return {}
    return {"interleave": "models", "reference_model": suite.reference_model or suite.models[0]}
