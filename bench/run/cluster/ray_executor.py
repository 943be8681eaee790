"""`bench run SUITE --executor ray [--address ADDRESS]`: each unit of a run is a Ray task on a node of a cluster.

How a unit travels: the driver (this process, the run's one writer, holding results/<run-id>/.lock) plans
the units (bench/run/plan.py), computes what each asks of a node (bench/run/cluster/placement.py), runs
one preparation task per node (models built, conversions made: bench/run/prepare.py), then submits every
unit as a streaming Ray task (bench/run/cluster/node.py) with those resources. On its node the unit runs
exactly as locally, in a fresh process, into a scratch run directory, each case in its own worker with
its own timeouts; each finished case comes back as it finishes (record, samples, logs, traces, reference
log-probabilities: bench/run/cluster/bundle.py). Only this process writes the run: it writes the files,
then hands record and samples to `record`, the runner's one writer, which appends to cases.jsonl.

A node that dies (or a Ray worker that is killed) mid-unit loses only the cases of that unit that had not
come back: they are recorded as failed with the reason, or, when the suite's `cluster.retry_lost_units`
allows, run again on any node that fits. A unit no node of the cluster can ever run is recorded as failed
at once (a task asking for what no node has would wait forever), and so is a queued unit whose only
fitting nodes died (checked every FEASIBLE_CHECK_S).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BadInput
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, Machine, RawSamples
from bench.run.cluster import node, placement
from bench.run.cluster.bundle import CaseBundle, reference_inputs, write_files
from bench.run.cluster.settings import ClusterSettings
from bench.run.cluster.unit_process import unit_json
from bench.run.plan import Unit
from bench.run.spawn import PROJECT_ROOT

Record = Callable[[CaseRecord, RawSamples | None], None]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
FEASIBLE_CHECK_S = 5.0  # how often units still waiting for a node are checked against the live nodes


def import_ray() -> Any:
    """The ray package, or BadInput naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise BadInput("--executor ray needs the ray package: pip install 'bench[ray]'") from None
    return ray


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Attempt:
    """One submission of (what is left of) a unit."""

    unit: Unit
    request: placement.Request
    tries: int
    remaining: dict[str, CaseSpec] = field(default_factory=dict)
    machine: Machine | None = None
    started: float = field(default_factory=time.time)

    def where(self) -> str:
        if self.machine is None:
            return "before it started on a node"
        return f"on node {(self.machine.node or '?')[:12]} ({self.machine.hostname})"


class RayExecutor:
    """Runs units as Ray tasks across the nodes of a cluster; the driver stays the run's one writer."""

    def __init__(self, address: str | None, settings: ClusterSettings, log: Callable[[str], None] = _say) -> None:
        self.address, self.settings, self.log = address, settings, log
        self.ray: Any = None

    # ------------------------------------------------------------ connecting and preparing

    def _connect(self) -> None:
        host = (self.address or "").rsplit(":", 1)[0]
        if self.address is None or host in LOOPBACK:  # else ray swaps loopback for this host's public address
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        self.ray = import_ray()
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING", "runtime_env": runtime_env}
        if self.address is None:
            options["include_dashboard"] = False
        try:
            self.ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BadInput(f"--executor ray: cannot connect to the Ray cluster at {self.address}: {exc}") from None

    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive") and (n.get("Resources") or {}).get("CPU", 0) > 0]

    def _prepare(self, nodes: list[dict], cases: list[CaseSpec], driver_sha: str | None) -> None:
        """One preparation task per node, pinned to it, before any unit; what each built is logged."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self.ray.remote(node.prepare_node)
        payload = [c.model_dump_json() for c in cases]
        refs = [task.options(num_cpus=min(1.0, n["Resources"]["CPU"]), max_retries=0,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(payload, self.settings.prepare_envs) for n in nodes]
        for ref in refs:
            try:
                done = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                self.log(f"  preparing a node failed ({type(exc).__name__}); its cases build what they need")
                continue
            machine = Machine.model_validate(done["machine"])
            self.log(f"  node {(machine.node or '')[:12]} ({machine.hostname}, machine {machine.machine_id}): "
                     f"prepared in {done['seconds']:.1f} s")
            for line in done["log"] + done["notes"]:
                self.log(f"    {line}")
            if driver_sha and done["git_sha"] and done["git_sha"] != driver_sha:
                self.log(f"    warning: this node runs bench at {done['git_sha'][:10]}, the driver at "
                         f"{driver_sha[:10]}")

    # ------------------------------------------------------------ units

    def _submit(self, attempt: _Attempt, run: RunDir, meta_json: str) -> Any:
        task = self.ray.remote(node.run_unit_on_node)
        options = {**attempt.request.ray_options(), "max_retries": 0, "num_returns": "streaming"}
        return task.options(**options).remote(unit_json(attempt.unit), meta_json,
                                              reference_inputs(run, attempt.unit), os.getcwd())

    def _fail(self, attempt: _Attempt, reason: str, record: Record, output_tail: str | None = None) -> None:
        for case in attempt.remaining.values():
            record(CaseRecord(case=case, status="failed", reason=reason, started_at=attempt.started,
                              wall_seconds=time.time() - attempt.started, machine=attempt.machine,
                              output_tail=output_tail), None)
        attempt.remaining.clear()

    def _lost(self, attempt: _Attempt, exc: Exception, record: Record) -> _Attempt | None:
        """The unit's task died: its unfinished cases run again (if allowed) or are recorded as failed."""
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if isinstance(exc, self.ray.exceptions.RayTaskError):  # bench raised on the node: a bug, not a lost node
            self._fail(attempt, f"the unit's task raised {attempt.where()}: {what}", record, str(exc)[-4000:])
            return None
        if attempt.tries <= self.settings.retry_lost_units:
            self.log(f"  unit lost {attempt.where()} ({type(exc).__name__}): running its "
                     f"{len(attempt.remaining)} unfinished case(s) again")
            unit = Unit(attempt.unit.kind, tuple(attempt.remaining.values()))
            return _Attempt(unit, attempt.request, attempt.tries + 1, dict(attempt.remaining))
        retried = f" (tried {attempt.tries} times)" if attempt.tries > 1 else ""
        self._fail(attempt, f"node lost: the node running this unit died or became unreachable {attempt.where()}"
                            f"{retried}; {what}", record)
        return None

    def _receive(self, attempt: _Attempt, item: object, run: RunDir, record: Record) -> None:
        if isinstance(item, node.UnitStarted):
            attempt.machine, attempt.started = item.machine, time.time()
            self.log(f"  {attempt.unit.label}: started {attempt.where()}")
        elif isinstance(item, CaseBundle):
            write_files(run, item.files)
            case_record = item.record
            record(case_record, item.samples)
            attempt.remaining.pop(case_record.id, None)
        elif isinstance(item, node.UnitEnded) and attempt.remaining:
            self._fail(attempt, f"the unit's process {attempt.where()} exited with code {item.returncode} before "
                                f"this case finished", record, item.output_tail)

    def _drop_infeasible(self, pending: dict[Any, _Attempt], record: Record) -> None:
        """Units still waiting for a node that no live node can give them (nodes died) fail, not wait forever."""
        nodes = self._nodes()
        for generator, attempt in list(pending.items()):
            if attempt.machine is None and not any(attempt.request.fits(n) for n in nodes):
                del pending[generator]
                self.ray.cancel(generator, force=True)
                self._fail(attempt, f"no live node of the cluster offers what this unit needs any more "
                                    f"({attempt.request.describe()})", record)

    def run(self, units: list[Unit], run: RunDir, record: Record) -> None:
        self._connect()
        pending: dict[Any, _Attempt] = {}
        try:
            meta = run.meta()
            attempts = [_Attempt(u, placement.request(u, self.settings), 1, {c.id: c for c in u.cases}) for u in units]
            nodes = self._nodes()
            self.log(f"ray: {len(nodes)} node(s), {len(units)} unit(s)")
            runnable = []
            for attempt in attempts:
                if any(attempt.request.fits(n) for n in nodes):
                    runnable.append(attempt)
                else:
                    self._fail(attempt, f"no node of the cluster offers what this unit needs "
                                        f"({attempt.request.describe()})", record)
            self._prepare(nodes, [c for a in runnable for c in a.unit.cases], meta.environment.git_sha)
            meta_json = meta.model_dump_json()
            pending = {self._submit(a, run, meta_json): a for a in runnable}
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=FEASIBLE_CHECK_S)
                if not ready:
                    self._drop_infeasible(pending, record)
                    continue
                generator = ready[0]
                attempt = pending[generator]
                try:
                    self._receive(attempt, self.ray.get(next(generator)), run, record)
                    continue
                except StopIteration:
                    del pending[generator]
                    if attempt.remaining:
                        self._fail(attempt, f"the unit ended {attempt.where()} without these cases", record)
                except self.ray.exceptions.RayError as exc:
                    del pending[generator]
                    again = self._lost(attempt, exc, record)
                    if again is not None:
                        pending[self._submit(again, run, meta_json)] = again
        finally:
            for generator in pending:
                try:
                    self.ray.cancel(generator, force=True)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
            self.ray.shutdown()
