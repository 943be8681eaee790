"""A validated suite expanded into cases: variant labels, case ids, profiling forced on.

Serving cases (models x servers) hash their own identity: no workload, repetitions or perplexity
settings, and the `serving` settings instead; the identity of every other case is unchanged.

Case ids are stable: the same suite gives the same ids in every version of bench, so a baseline run
compares with a new one case by case. An id is `<variant>.<model>.<task>.<hash>`, the hash taken over
the case's identity (everything but what it is compared with).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import typing
from pathlib import Path
from typing import Any

from bench.records.schema import CaseSpec, Repetitions, Workload
from bench.suite.schema import ServerVariant, Suite, Variant

# Settings added after format 1, with their defaults: left out of a case's identity while at their default,
# so a suite that does not use them keeps the case ids it had (and old baselines still match case by case).
ADDED_SETTINGS: dict[str, dict[str, Any]] = {
    "profile": {"decode_steps": 4, "max_trace_mb": 20.0},
    "repetitions": {"processes": 2, "round_repetitions": 2, "interleave": "resident"},
}


def _identity_settings(section: str, settings: dict[str, Any]) -> dict[str, Any]:
    added = ADDED_SETTINGS.get(section, {})
    return {k: v for k, v in settings.items() if not (k in added and v == added[k])}


def option_grid(options: dict[str, Any], list_typed: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One options dict per combination of the list-valued options. An option whose own type is a list
    (`list_typed`, e.g. a server's extra_args) is one value when given a flat list; a list of lists expands."""
    def axis(key: str, value: Any) -> list:
        if key in list_typed:
            return value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
        return value if isinstance(value, list) else [value]

    axes = {k: axis(k, v) for k, v in options.items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]


def list_typed_options(variant: Variant | ServerVariant) -> frozenset[str]:
    """The options of a variant's backend or server whose declared type is a list (they do not expand)."""
    if isinstance(variant, ServerVariant):
        from bench.serving.launch.servers import server_class

        model = server_class(variant.server).Options
    else:
        from backends import backend_class

        model = backend_class(variant.backend).Options
    return frozenset(name for name, f in model.model_fields.items()
                     if f.annotation is list or typing.get_origin(f.annotation) is list)


def variant_grid(variant: Variant | ServerVariant) -> list[dict[str, Any]]:
    """The options of each variant a suite entry expands to (see option_grid)."""
    return option_grid(variant.options, list_typed_options(variant))


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
    task = Workload(**workload).short if workload else identity["task"]
    return f"{_slug(identity['variant'])}.{_slug(Path(identity['model']).name)}.{task}.{digest}"


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
    per_window = [settings.model_dump() for settings in suite.perplexity.per_case()]  # one, unless window is a list
    perplexity = per_window[0]  # what latency cases carry (their prompts come from the same text)
    for model, variant in itertools.product(suite.models, suite.backends):
        if variant.models is not None and model not in variant.models:
            continue
        grid = variant_grid(variant)
        for options in grid:
            label = variant_label(variant, options, expanded=len(grid) > 1)
            tasks: list[tuple[str, dict | None, dict]] = []
            wanted = [task for task in suite.tasks if variant.tasks is None or task in variant.tasks]
            if "latency" in wanted:
                tasks += [("latency", point, perplexity) for workload in suite.workloads for point in workload.grid()]
            if "perplexity" in wanted:
                tasks += [("perplexity", None, settings) for settings in per_window]
            for task, workload, settings in tasks:
                identity = {"suite": suite.name, "model": model, "backend": variant.backend, "variant": label,
                            "options": options, "task": task, "workload": workload, "repetitions": repetitions,
                            "perplexity": settings, "threads": suite.threads, "timeout_s": suite.timeout_s,
                            "interpreter": variant.interpreter}
                profile = _profile_settings(suite, variant)
                if task == "latency" and profile["enabled"]:  # only then, so unprofiled case ids do not change
                    identity["profile"] = _identity_settings("profile", profile)
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
