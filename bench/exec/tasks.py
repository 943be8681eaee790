"""The task table: the function that runs a case of each task in a worker, `(case, run_dir, driver) -> WorkerResult`.

`TASKS` is a registry (bench/core/registry.py) that names no module itself: each task is registered by the
layer that runs it, so this layer stands below both the runner (bench/run/) and the tasks' folders
(bench/serving/) and neither of those imports the other. `latency` and `perplexity` are registered by the
runner's side (bench/run/spawn.py, as the import path of bench/run/worker.py's function: the runner never
imports the measuring code); `serving` by bench/serving/run.py itself, imported by the program's top when it
runs cases (bench/cli/run.py). The runner starts a case's worker with its task's import path
(`TASKS.path(task)`) on the command line, and the worker imports that function (`task_function`): a worker is
another interpreter, where nothing but its own layer is registered.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.core.registry import Registry, import_target
from bench.exec.protocol import Driver, WorkerResult
from bench.records.schema import CaseSpec

Task = Callable[[CaseSpec, Path | None, Driver | None], WorkerResult]

TASKS: Registry[Task] = Registry("task", listing="registered (by the module that runs it, once imported)")


def task_function(path: str) -> Task:
    """The function the import path "module:function" names, which runs a case of its task in this process."""
    function = import_target(path)
    if not callable(function):
        raise TypeError(f"the task {path} is not a function")
    task: Task = function
    return task
