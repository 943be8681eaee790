"""Interleaved measurement of the variants of one model and workload (a unit of bench/run/plan.py): the schedule.

Resident (the default): each variant runs in its own worker process (memory stays per case), all of
them loaded side by side and driven round by round through pipes (bench/exec/protocol.py, held by
bench/run/handle.py). In each round every variant measures `round_repetitions` generations, in a new random
order, while the others wait, so drift of the machine hits all variants alike. This is done in `processes`
fresh sets of worker processes, one after the other, so the confidence interval of each median covers the
variation between processes, not only between the repetitions inside one (a two-stage bootstrap,
bench/measure/stats.py). Set k of P measures each variant until the stop rule (bench/measure/policy.py)
says k/P of the plan is done, so the last set stops at the target or the caps, and the processes are of
comparable size.

Processes: where variants cannot be resident together (several large models on one GPU), every
round of every variant is a short process of its own, alternating between variants.

`timeout_s` bounds the whole case: the time the runner waits on the case's workers (loading, rounds,
finishing) over all its process sets; a set is started only for the cases that have something left to
measure in it. A variant whose worker crashes, runs past that budget or fails is recorded as failed with
the reason and its output; the others go on. Ctrl-C kills the set's workers. Each case's record is built from
what it measured (bench/run/latency_record.py), with its ratio to the reference from the rounds both measured.

A unit of a suite with `interleave: models` holds every model's variants of one workload: the same rounds,
and two paired ratios per case where they apply: to the reference variant on its own model
(`*_vs_reference`, as for any unit) and to the same variant on the reference model (`*_vs_reference_model`).
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Protocol

from bench.exec import envs
from bench.exec.protocol import Finish, Measure, Measured, Ready, WorkerResult
from bench.measure import machine, policy
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, RawSamples
from bench.run.handle import Budget, Expected, WorkerGone, WorkerProcess
from bench.run.latency_record import MeasuredCase, build_record


class PacedWorker(Protocol):
    """What the schedule needs of a worker (bench/run/handle.py `WorkerProcess`; a test may give its own)."""

    @property
    def pid(self) -> int: ...

    def send(self, command: Measure | Finish) -> None: ...

    def receive(self, expected: type[Expected]) -> Expected: ...

    def finish(self, step: str = "running") -> WorkerResult: ...

    def kill(self) -> None: ...


StartWorker = Callable[[CaseSpec, RunDir, int, Budget], PacedWorker]


def start_worker(case: CaseSpec, run: RunDir, process: int, budget: Budget) -> PacedWorker:
    """Start `case`'s worker for process set (or round) `process`, paced over pipes; its output appended to the
    case's log under a line that says which process it is."""
    with run.open_log(run.log_path(case.id), "ab") as log:
        log.write(f"=== process {process + 1} ===\n".encode())
        log.flush()
        return WorkerProcess.start(case, run, run.path / "tmp" / f"{case.id}.p{process}.json", log, budget,
                                   driven=True)


class Schedule:
    """The rounds of one interleaved unit: which worker processes run when, and what each case measured."""

    def __init__(self, cases: list[CaseSpec], run: RunDir, start: StartWorker = start_worker,
                 rng: random.Random | None = None) -> None:
        self.cases, self.run, self.start = cases, run, start
        self.measured = {case.id: MeasuredCase(case) for case in cases}
        self.budgets = {case.id: Budget(case.timeout_s) for case in cases}
        self.rng = rng or random.Random(hash(tuple(sorted(self.measured))) & 0xFFFFFFFF)

    def done(self, case_id: str, process_set: int | None = None) -> bool:
        """Whether the case is gone or the stop rule lets it stop by the end of `process_set` (None: the plan)."""
        m = self.measured[case_id]
        return m.gone is not None or policy.done(m.progress, m.case.repetitions, process_set) is not None

    def measure(self) -> dict[str, MeasuredCase]:
        """Run the unit's schedule (resident or processes, by the first case's repetitions); what each case
        measured, by case id."""
        if self.cases[0].repetitions.interleave == "resident":
            self._resident()
        else:
            self._processes()
        return self.measured

    def _resident(self) -> None:
        repetitions = self.cases[0].repetitions
        for process in range(repetitions.processes):
            workers = self._start_set(self.cases, process, process)
            if not workers:
                continue
            with _killed_on_interrupt(workers):
                round_index = 0
                while any(not self.done(c, process) for c in workers):
                    self._round(workers, process, round_index, process)
                    round_index += 1
                self._finish(workers, last=process == repetitions.processes - 1)

    def _processes(self) -> None:
        """One short process per variant and round, alternating: no two variants resident at once."""
        round_index = 0
        while any(not self.done(c.id) for c in self.cases):
            order = [c for c in self.cases if not self.done(c.id)]
            self.rng.shuffle(order)
            for case in order:
                workers = self._start_set([case], round_index, None)
                with _killed_on_interrupt(workers):
                    self._round(workers, round_index, 0)
                    self._finish(workers, last=False)
            round_index += 1

    def _start_set(self, cases: list[CaseSpec], process: int, process_set: int | None) -> dict[str, PacedWorker]:
        """Start a worker per case that has something left to measure by the end of `process_set` and leave them
        all resident. In the first process set one after another (loading and warming up alone: that load time is
        the case's `load_s`); in later sets all at once, as nothing is measured while they load (the load times
        they report are not used)."""
        spawned: dict[str, PacedWorker] = {}
        with _killed_on_interrupt(spawned):
            for case in cases:
                if self.done(case.id, process_set):  # gone, or nothing left to measure: no process to start
                    continue
                try:
                    spawned[case.id] = self.start(case, self.run, process, self.budgets[case.id])
                    if process == 0:
                        spawned[case.id].receive(Ready)
                except envs.MissingEnv as exc:
                    self.measured[case.id].gone = WorkerResult(status="skipped", reason=str(exc))
                except WorkerGone as gone:
                    self.measured[case.id].gone = gone.result
                    spawned.pop(case.id, None)
            workers: dict[str, PacedWorker] = {}
            for case_id, worker in spawned.items():
                try:
                    if process > 0:
                        worker.receive(Ready)
                    workers[case_id] = worker
                except WorkerGone as gone:
                    self.measured[case_id].gone = gone.result
        return workers

    def _round(self, workers: dict[str, PacedWorker], process: int, round_index: int,
               process_set: int | None = None) -> None:
        """One round: every variant not yet done (by the end of `process_set`) measures round_repetitions
        generations (fewer where that would pass its `max`), in a new random order."""
        order = [case_id for case_id in workers if not self.done(case_id, process_set)]
        self.rng.shuffle(order)
        for case_id in order:
            worker, m = workers[case_id], self.measured[case_id]
            probe = machine.Probe(worker.pid).start()
            room = m.case.repetitions.max - len(m.stamps)  # >= 1: a case at its max is done
            try:
                worker.send(Measure(repetitions=min(m.case.repetitions.round_repetitions, room)))
                reply = worker.receive(Measured)
            except WorkerGone as gone:
                m.gone = gone.result
                continue
            m.add(reply.stamps, reply.seconds, process, round_index, probe.stop())

    def _finish(self, workers: dict[str, PacedWorker], last: bool) -> None:
        """End the workers; a case's process profiles it when it is the last set or the case measured its plan."""
        for case_id, worker in workers.items():
            if self.measured[case_id].gone is not None:  # its worker is dead already
                continue
            try:
                worker.send(Finish(profile=last or self.done(case_id)))
                self.measured[case_id].results.append(worker.finish("finishing"))
            except WorkerGone as gone:
                self.measured[case_id].gone = gone.result


@contextlib.contextmanager
def _killed_on_interrupt(workers: dict[str, PacedWorker]) -> Iterator[None]:
    """Ctrl-C (or an error of the runner itself) while a set of workers is open kills them all, then goes on up."""
    try:
        yield
    except BaseException:
        for worker in workers.values():
            worker.kill()
        raise


def run_group(cases: list[CaseSpec], run: RunDir) -> Iterator[tuple[CaseRecord, RawSamples | None]]:
    """Measure the variants of one model and workload (with `interleave: models`, of every model) interleaved;
    one record (and samples) per case."""
    measured = Schedule(cases, run).measure()
    mode = cases[0].repetitions.interleave
    for m in measured.values():
        yield build_record(m, measured, mode, run.log_path(m.case.id))
