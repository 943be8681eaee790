"""The tasks a worker runs, by name: one function per task, `(case, run_dir, driver) -> WorkerResult`.

The worker (bench/run/worker.py) looks a case's task up here by import path, as the runner looks backends
up in their registry, so bench/run does not import the folders of other tasks (bench/serving/ for
`serving`) and they in turn use only this layer (the protocol, the side environments).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from bench.exec.protocol import Driver, WorkerResult
from bench.records.schema import CaseSpec

Task = Callable[[CaseSpec, Path | None, Driver | None], WorkerResult]

TASKS = {
    "latency": "bench.run.worker:run_backend_case",
    "perplexity": "bench.run.worker:run_backend_case",
    "serving": "bench.serving.run:run_serving_case",
}


def task_function(task: str) -> Task:
    """The function that runs a case of this task in a worker process."""
    module_name, name = TASKS[task].split(":")
    function: Task = getattr(importlib.import_module(module_name), name)
    return function
