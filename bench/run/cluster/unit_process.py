"""`python -m bench.run.cluster.unit_process UNIT.json RUN_DIR`: one unit, run exactly as locally, into RUN_DIR.

A node's Ray task (bench/run/cluster/node.py) starts it as a fresh process in a scratch run directory on
the node. It runs the unit with `run_unit` (each case in its own worker process, with its own timeouts,
the same clock and memory sampler as a local run), is that scratch run's one writer (samples written,
then the record appended), and prints `DONE` and each finished case's id on stdout, one line, for the
task to send back (anything else a library prints there is ignored). It dies with its parent (the Ray
worker), and its case workers die with it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.exec.tasks import TASKS
from bench.records.rundir import RunDir
from bench.records.schema import CaseSpec
from bench.run.plan import Unit
from bench.run.runner import run_unit

DONE = "bench-case-done "  # the line a finished case's id follows on stdout


def unit_json(unit: Unit) -> str:
    """The unit, and the import path of each of its tasks' functions as registered in the driver (a node's process
    has only its own layer's tasks registered: bench/exec/tasks.py)."""
    task_paths = {case.task: TASKS.path(case.task) for case in unit.cases}
    return json.dumps({"kind": unit.kind, "cases": [case.model_dump(mode="json") for case in unit.cases],
                       "tasks": task_paths})


def read_unit(text: str) -> Unit:
    """The unit; the driver's tasks registered here."""
    data = json.loads(text)
    for task, path in data.get("tasks", {}).items():
        TASKS.add(task, path)
    return Unit(data["kind"], tuple(CaseSpec.model_validate(case) for case in data["cases"]))


def main(argv: list[str]) -> int:
    unit = read_unit(Path(argv[0]).read_text())
    path = Path(argv[1])
    run = RunDir(path.parent, path.name)
    with run.writer():
        for record, samples in run_unit(unit, run):
            if samples is not None:
                run.write_samples(record.id, samples)
            run.append(record)
            print(f"{DONE}{record.id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
