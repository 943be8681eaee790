"""Preparing a machine for a suite's cases, once, before any of them runs (and outside every timed step).

The built-in models are built, each backend variant's converted files (GGUF, ONNX exports) are made by
its `prepare` hook (backends/base.py), and with `create_envs` the side environments the cases name
(`interpreter: env:NAME`) are created. All of these are cached atomically under an fcntl lock
(bench/core/cache.py), so machines that prepare at the same time, or a case that needs one that was not
prepared, still build each thing once per cache. A local run prepares its machine here; the Ray executor
runs this once on every node (bench/run/cluster/node.py) before its units. A step that fails is noted, not
raised: the case that needs it fails (or is skipped) with its own reason, as it would without preparation.

A local run prepares in a child process (`prepare_here`), so that Ctrl-C stops the run at once even while a
model trains or a conversion runs in native code (bench/core/process.py `call_in_child`).
"""
from __future__ import annotations

from collections.abc import Callable

from backends import backend_class
from bench.core.process import ChildError, call_in_child
from bench.exec import envs
from bench.models import resolve_model
from bench.records.schema import CaseSpec


def prepare(cases: list[CaseSpec], log: Callable[[str], None], create_envs: bool = False) -> list[str]:
    """Build what `cases` need on this machine; returns notes on what could not be prepared."""
    notes: list[str] = []
    paths = {model: resolve_model(model, log=log) for model in dict.fromkeys(c.model for c in cases)}
    variants = {(c.model, c.backend, repr(sorted(c.options.items()))): c for c in cases if c.task != "serving"}
    for case in variants.values():
        try:
            cls = backend_class(case.backend)
            cls.prepare(paths[case.model], cls.Options(**case.options), log)
        except Exception as exc:  # noqa: BLE001 - noted; the case reports it with its own reason
            notes.append(f"{case.variant} on {case.model}: not prepared ({type(exc).__name__}: {exc})")
    interpreters = {c.interpreter or "" for c in cases}
    names = sorted(name[len(envs.PREFIX):] for name in interpreters if name.startswith(envs.PREFIX))
    for name in names:
        if create_envs:
            envs.create(name, log=log)
        elif not envs.is_complete(envs.env_dir(name)):
            notes.append(f"side environment {name} is missing here: its cases are skipped "
                         f"({envs.create_command(name)})")
    return notes


def prepare_here(cases: list[CaseSpec], log: Callable[[str], None]) -> list[str]:
    """`prepare` in a child process of this one, stopped with it on Ctrl-C or SIGTERM (the exception goes on here);
    a child that dies (the out-of-memory killer, say) is a note: each case then builds what it needs itself."""
    try:
        return call_in_child(prepare, cases, log)
    except ChildError as exc:
        return [f"preparation did not finish: {exc}"]
