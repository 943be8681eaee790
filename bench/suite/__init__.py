"""Declarative YAML suites: `load_suite` reads, validates and expands one into cases.

- YAML with the line of every field and `FILE:LINE: field: message` errors (`SuiteError`) are read by
  bench/records/yaml_lines.py (a run's loader reads a format-1 suite snapshot with it too);
- `schema`: what a suite may say (pydantic);
- `expand`: the matrix of cases (`CaseSpec`, bench/records/schema.py) with stable ids;
- `checks`: what the schema cannot see (models, texts, contexts, threads, labels), with file:line errors.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from bench.records.schema import CaseSpec
from bench.records.yaml_lines import SuiteError, format_errors, read_yaml
from bench.suite import checks
from bench.suite.expand import MAX_CASES, expand, force_profile
from bench.suite.schema import Suite

__all__ = ["MAX_CASES", "Suite", "SuiteError", "load_suite"]


def load_suite(path: str | Path, profile: dict | None = None, models: list[str] | None = None,
               max_cases: int | None = MAX_CASES) -> tuple[Suite, list[CaseSpec]]:
    """Parse, validate and expand a suite file. Raises SuiteError with file:line: field: message.

    `profile`: force profiling on with these settings (what `bench profile` runs; see force_profile).
    `models`: run these models instead of the suite's (`--model`); an error about one of them names the
    suite's `models:` line. `max_cases`: refuse a suite that expands to more cases (None: no limit); counted
    before anything is expanded or checked case by case."""
    with _collector_paused():
        return _load(Path(path), profile, models, max_cases)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a suite is read: the YAML nodes, pydantic models and cases of a
    large suite (10,000 variants) are some 10**6 objects, none in a cycle, and each full collection walks them all
    (3-4 times the reading's own cost)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _load(path: Path, profile: dict | None, models: list[str] | None,
          max_cases: int | None) -> tuple[Suite, list[CaseSpec]]:
    data, index = read_yaml(path)
    if profile is not None:
        data = force_profile(data, profile)
    if models:
        data = {**data, "models": list(models)}
        index = {loc: line for loc, line in index.items() if loc[:1] != ("models",) or len(loc) == 1}
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(format_errors(path, index, exc.errors(), Suite)) from None
    checks.check_case_count(path, index, suite, max_cases)
    for check in (checks.check_something_to_run, checks.check_options, checks.check_labels, checks.check_models,
                  checks.check_eval_text, checks.check_prompts_file,
                  checks.check_contexts, checks.check_threads, checks.check_interpreters):
        check(path, index, suite)
    cases = expand(suite)
    checks.check_cases(path, index, suite, cases)
    return suite, cases
