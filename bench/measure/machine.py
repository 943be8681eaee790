"""What the machine did while a case was measured: load from other processes, CPU and GPU clocks.

`Probe(pid).start()` ... `stop()` around a measured round gives the CPUs kept busy by *other* processes
(system-wide busy CPU time minus the measured process's and this one's, per second of wall time), the
CPU frequency where the kernel reports it, and the GPU's SM clock, utilization and the processes other than the
measured one (and its children, and this one) holding a context on a GPU, where NVML has them.
`summarize` turns a case's rounds into a `MachineState`, marked contended when others kept at least
half a CPU busy on average: its numbers were measured on a shared machine.

Where the kernel keeps scheduler statistics (`/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, then
nanoseconds waiting on a run queue), the probe also reads the measured process's **run-queue wait share**:
of the time its threads were ready to run, the share they waited for a CPU. That is what slows a CPU-bound
timing (by about 1 / (1 - share)), and it keeps telling two states apart where the others' load no longer can:
on a saturated machine the others' load flattens near the CPU count whatever runs beside the case.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from bench.records.schema import MachineState

CONTENDED_CPUS = 0.5  # others' mean load (in CPUs) from which a case is marked as measured under contention


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _process_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


def _cpu_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        return None
    return float(freq.current) if freq and freq.current else None


def _gpu(exclude: set[int]) -> tuple[float | None, float | None, int | None]:
    """(lowest SM clock MHz, highest utilization %, processes not in `exclude` with a context on a GPU) over the
    GPUs NVML sees, or Nones. NVML names processes by the PIDs of the host's namespace: inside a container that
    does not share them, the measured process itself may count as another (the same on both sides of a
    comparison made on the same runner)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return None, None, None
        clocks = [pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) for h in handles]
        util = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
        pids = {p.pid for h in handles for p in (*pynvml.nvmlDeviceGetComputeRunningProcesses(h),
                                                 *pynvml.nvmlDeviceGetGraphicsRunningProcesses(h))}
        return float(min(clocks)), float(max(util)), len(pids - exclude)
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU: nothing to report
        return None, None, None


def _sched_ns(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting on a run queue) summed over the threads of `pid`, or None without schedstat."""
    running = waiting = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
        except OSError:  # a thread that ended meanwhile; or no schedstat in this kernel
            continue
        if len(fields) >= 2:
            running, waiting = running + int(fields[0]), waiting + int(fields[1])
    return (running, waiting) if tasks and (running or waiting) else None


@dataclass
class Reading:
    other_cpus: float
    cpu_mhz: float | None
    gpu_clock_mhz: float | None
    gpu_utilization: float | None
    run_queue_wait_share: float | None = None  # of the measured process's ready time, the share spent waiting
    gpu_other_processes: int | None = None


class Probe:
    """Around one measured stretch of process `pid`: how much else the machine did meanwhile."""

    def __init__(self, pid: int) -> None:
        self._measured = psutil.Process(pid)
        self._self = psutil.Process()

    def start(self) -> Probe:
        self._t0, self._busy0 = time.monotonic(), _busy_seconds()
        self._mine0 = _process_seconds(self._measured) + _process_seconds(self._self)
        self._sched0 = _sched_ns(self._measured.pid)
        return self

    def stop(self) -> Reading:
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = _busy_seconds() - self._busy0
        mine = _process_seconds(self._measured) + _process_seconds(self._self) - self._mine0
        clock, util, others = _gpu(self._ours())
        return Reading(max(0.0, (busy - mine) / wall), _cpu_mhz(), clock, util, self._wait_share(), others)

    def _ours(self) -> set[int]:
        """The measured process, its children (a server's engine processes) and this process."""
        try:
            children = {c.pid for c in self._measured.children(recursive=True)}
        except psutil.Error:
            children = set()
        return {self._measured.pid, self._self.pid, *children}

    def _wait_share(self) -> float | None:
        after = _sched_ns(self._measured.pid)
        if self._sched0 is None or after is None:
            return None
        running, waiting = after[0] - self._sched0[0], after[1] - self._sched0[1]
        return waiting / (running + waiting) if running + waiting > 0 and waiting >= 0 else None


def summarize(readings: list[Reading]) -> MachineState | None:
    if not readings:
        return None
    others = [r.other_cpus for r in readings]
    mhz = [r.cpu_mhz for r in readings if r.cpu_mhz is not None]
    gpu_clock = [r.gpu_clock_mhz for r in readings if r.gpu_clock_mhz is not None]
    gpu_util = [r.gpu_utilization for r in readings if r.gpu_utilization is not None]
    waits = [r.run_queue_wait_share for r in readings if r.run_queue_wait_share is not None]
    gpu_others = [r.gpu_other_processes for r in readings if r.gpu_other_processes is not None]
    mean = sum(others) / len(others)
    return MachineState(cpus=available_cpus(), other_cpu_load_mean=mean, other_cpu_load_max=max(others),
                        cpu_mhz_min=min(mhz) if mhz else None, cpu_mhz_max=max(mhz) if mhz else None,
                        gpu_clock_mhz_min=min(gpu_clock) if gpu_clock else None,
                        gpu_utilization_max=max(gpu_util) if gpu_util else None,
                        run_queue_wait_share=sum(waits) / len(waits) if waits else None,
                        gpu_other_processes=max(gpu_others) if gpu_others else None,
                        contended=mean >= CONTENDED_CPUS)
