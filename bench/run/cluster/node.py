"""The bodies of the Ray tasks on a node: prepare the node once, and run one unit, streaming its cases back.

Plain functions (bench/run/cluster/ray_executor.py wraps them with `ray.remote`), so a node needs bench and
the suite's backends installed (or on PYTHONPATH), not any particular file layout.

`run_unit_on_node` is a generator (a Ray streaming task): `UnitStarted` (which machine), then one
`CaseBundle` per finished case as it finishes, then `UnitEnded` (how the unit's process exited). The
unit runs in a fresh process (bench/run/cluster/unit_process.py) in a scratch run directory under
$BENCH_SCRATCH (default: the temp dir), removed when the task ends. If the node dies, whatever was
already sent is kept by the driver; the rest of the unit is the driver's to record or run again.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.core.process import die_with_parent, log_tail
from bench.records.rundir import RunDir
from bench.records.schema import CaseSpec, Machine, RunMeta
from bench.run import environment
from bench.run.cluster.bundle import bundle, write_inputs
from bench.run.cluster.unit_process import DONE
from bench.run.prepare import prepare
from bench.run.spawn import PROJECT_ROOT

SCRATCH_VARIABLE = "BENCH_SCRATCH"


@dataclass
class UnitStarted:
    machine: Machine


@dataclass
class UnitEnded:
    returncode: int | None
    output_tail: str | None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _node_machine() -> Machine:
    os.environ[environment.NODE_VARIABLE] = _node_id()
    return environment.machine()


def prepare_node(cases_json: list[str], create_envs: bool) -> dict:
    """Build what the suite's cases need on this node (bench/run/prepare.py), once, before its units."""
    started = time.monotonic()
    cases = [CaseSpec.model_validate_json(text) for text in cases_json]
    lines: list[str] = []
    notes = prepare(cases, lines.append, create_envs=create_envs)
    return {"machine": _node_machine().model_dump(mode="json"), "seconds": time.monotonic() - started,
            "log": lines, "notes": notes, "git_sha": environment.fingerprint().git_sha}


def _unit_env(node: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, environment.NODE_VARIABLE: node, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_unit_on_node(unit_text: str, meta_json: str, inputs: dict[str, bytes], cwd: str) -> Iterator[object]:
    """Run one unit (its JSON, bench/run/cluster/unit_process.py) here; yield what the driver records."""
    machine = _node_machine()
    yield UnitStarted(machine)
    scratch = Path(tempfile.mkdtemp(prefix="bench-unit-", dir=os.environ.get(SCRATCH_VARIABLE) or None))
    proc: subprocess.Popen | None = None
    try:
        meta = RunMeta.model_validate_json(meta_json)
        run = RunDir(scratch, meta.run_id)
        run.create(meta)
        write_inputs(run, inputs)
        unit_file, log_file = scratch / "unit.json", scratch / "unit.log"
        unit_file.write_text(unit_text)
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.run.cluster.unit_process", str(unit_file), str(run.path)],
                cwd=cwd if Path(cwd).is_dir() else scratch, stdout=subprocess.PIPE, stderr=log,
                env=_unit_env(machine.node or ""), start_new_session=True,
                preexec_fn=die_with_parent())  # noqa: PLW1509
            assert proc.stdout is not None
            for line in proc.stdout:
                text = line.decode(errors="replace")
                if text.startswith(DONE):
                    case_id = text[len(DONE):].strip()
                    yield bundle(run, next(r for r in reversed(run.records()) if r.id == case_id))
            proc.wait()
        yield UnitEnded(proc.returncode, log_tail(log_file))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)

