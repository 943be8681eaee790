"""Declarative YAML suites: `load_suite` reads, validates and expands one into cases.

- `reader`: YAML with line numbers, `FILE:LINE: field: message` errors (`SuiteError`);
- `schema`: what a suite may say (pydantic);
- `expand`: the matrix of cases (`CaseSpec`, bench/records/schema.py) with stable ids.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from backends import backend_class
from bench.records.schema import CaseSpec
from bench.suite.expand import expand, force_profile, option_grid
from bench.suite.reader import LineIndex, SuiteError, format_errors, line_of, read_yaml
from bench.suite.schema import Suite

__all__ = ["Suite", "SuiteError", "load_suite"]


def _check_options(path: Path, index: LineIndex, suite: Suite) -> None:
    from bench.serving.servers import server_class

    checks = [("backends", i, backend_class(v.backend).Options, v.options) for i, v in enumerate(suite.backends)]
    checks += [("servers", i, server_class(v.server).Options, v.options) for i, v in enumerate(suite.servers)]
    for section, i, options_model, declared in checks:
        for options in option_grid(declared):
            try:
                options_model(**options)
            except ValidationError as exc:
                raise SuiteError(format_errors(path, index, exc.errors(), options_model,
                                               prefix=(section, i, "options"))) from None


def _check_reference(path: Path, index: LineIndex, suite: Suite, cases: list[CaseSpec]) -> None:
    labels = sorted({c.variant for c in cases})
    if suite.reference is not None and suite.reference not in labels:
        raise SuiteError(f"{path}:{line_of(index, ('reference',))}: reference: '{suite.reference}' is not "
                         f"a variant of this suite; valid values: {', '.join(labels)}")


def load_suite(path: str | Path, profile: dict | None = None) -> tuple[Suite, list[CaseSpec]]:
    """Parse, validate and expand a suite file. Raises SuiteError with file:line: field: message.

    `profile`: force profiling on with these settings (what `bench profile` runs; see force_profile)."""
    path = Path(path)
    data, index = read_yaml(path)
    if profile is not None:
        data = force_profile(data, profile)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(format_errors(path, index, exc.errors(), Suite)) from None
    _check_options(path, index, suite)
    cases = expand(suite)
    _check_reference(path, index, suite, cases)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise SuiteError(f"{path}: two cases are identical (same model, variant and task); remove the duplicate")
    return suite, cases
