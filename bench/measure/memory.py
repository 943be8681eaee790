"""The one memory sampler every case runs under: peak RSS of the case's process tree, and CUDA / NVML peaks.

The case's own process needs no sampling: the kernel keeps its exact high-water mark, `VmHWM` in
/proc/self/status, read at stop. VmHWM starts fresh at exec, unlike `ru_maxrss`, which a child
inherits from a large parent across fork+exec (a runner that built a model in-process would
otherwise show its own peak in every case). A background thread samples only what the kernel does
not track for us: the memory of the processes the case started (a runtime's engine process, e.g.
vLLM with multiprocessing; rediscovered every second, sampled every 20 ms), and, when NVML is
available, the GPU memory NVML attributes to the case's processes. A tree is measured by its PSS
(proportional set size: a page shared by n processes counts 1/n in each), so a forked child, which
shares its parent's pages, is not counted twice as a plain sum of RSS would; PSS costs ~25 ms per
read for a 600 MB process (/proc/PID/smaps_rollup), so the 20 ms samples sum RSS, which is cheap and
never below the PSS sum, and the tree's PSS is read when that sum reaches a new high, at most every
0.2 s, and at stop. Where /proc has no VmHWM the
thread samples the case's own RSS too. Sampling the process tree every 5 ms, as an earlier version
did, cost about 20 % of a 1 ms/token decode loop on a 2-core machine (benchmarks/). Anything that does
not apply on this machine is None with the reason in `not_applicable`, never an error or a zero.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil

from bench.core.process import vm_hwm_bytes

SAMPLE_INTERVAL_S = 0.02  # children's RSS and NVML
CHILDREN_INTERVAL_S = 1.0  # rediscovering the process tree scans /proc: rarely
PSS_MIN_GAP_S = 0.2  # reading a tree's PSS walks its page tables: at most this often


def _nvml_handles() -> tuple[tuple | None, str | None]:
    """((nvml module, device handles), None) or (None, reason)."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml not installed (pip install 'bench[gpu]')"
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc.__class__.__name__}"
    return (pynvml, handles), None


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


@dataclass
class MemoryReading:
    metrics: dict[str, int | None]
    not_applicable: dict[str, str] = field(default_factory=dict)


class MemorySampler:
    """Samples the process tree rooted at `pid` (default: this process; a serving case samples its server's)."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, pid: int | None = None) -> None:
        self.interval_s = interval_s
        self._pid = pid
        self._process = psutil.Process(pid or os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_rss = 0
        self.peak_rss = 0  # sampled, the whole process tree (its PSS when it has more than one process)
        self.max_children = 0
        self._rss_sum_checked = 0  # the RSS sum at the last PSS read: PSS is read again only above it
        self._pss_at = -1.0
        self._children: list[psutil.Process] = []
        self._children_at = -1.0
        self._own_hwm = vm_hwm_bytes(pid or "self") is not None  # the kernel tracks the root's peak: not sampled
        self._nvml, self._nvml_reason = _nvml_handles()
        self.peak_nvml = 0

    def _tree(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._children_at >= CHILDREN_INTERVAL_S:
            self._children_at = now
            try:
                self._children = self._process.children(recursive=True)
            except psutil.Error:
                self._children = []
        return [self._process, *self._children]

    def _nvml_bytes(self, pids: set[int]) -> int:
        assert self._nvml is not None
        pynvml, handles = self._nvml
        total = 0
        for handle in handles:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return total

    @staticmethod
    def _sum(tree: list[psutil.Process], proportional: bool) -> int:
        """RSS, or PSS (where the platform and permissions give it; else RSS), summed over the tree."""
        total = 0
        for proc in tree:
            try:
                if proportional:
                    try:
                        info = proc.memory_full_info()
                        total += getattr(info, "pss", info.rss)
                        continue
                    except psutil.AccessDenied:  # another user's process: its RSS, an upper bound
                        pass
                total += proc.memory_info().rss
            except psutil.Error:  # a child that just exited
                pass
        return total

    def _sample(self, everything: bool = False) -> None:
        tree = self._tree()
        self.max_children = max(self.max_children, len(tree) - 1)
        if everything or len(tree) > 1 or not self._own_hwm:
            rss = self._sum(tree, proportional=False)
            if len(tree) == 1:
                self.peak_rss = max(self.peak_rss, rss)
            elif rss > self._rss_sum_checked and (everything or time.monotonic() - self._pss_at >= PSS_MIN_GAP_S):
                self._rss_sum_checked, self._pss_at = rss, time.monotonic()
                self.peak_rss = max(self.peak_rss, self._sum(tree, proportional=True))
        if self._nvml:
            self.peak_nvml = max(self.peak_nvml, self._nvml_bytes({p.pid for p in tree}))

    def _needs_sampling(self) -> bool:
        """Whether anything changes between samples that the kernel does not keep a peak of for us."""
        return bool(self._children) or not self._own_hwm or self._nvml is not None

    def _loop(self) -> None:
        # with nothing to sample, wake only to look for new child processes: the thread stays out of the way
        while not self._stop.wait(self.interval_s if self._needs_sampling() else CHILDREN_INTERVAL_S):
            self._sample()

    def start(self) -> MemorySampler:
        try:
            self.baseline_rss = self._process.memory_info().rss
        except psutil.Error:  # another process that already exited
            self.baseline_rss = 0
        self._sample(everything=True)
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryReading:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._children_at = -1.0  # a last look at the whole tree
        self._sample(everything=True)
        hwm = vm_hwm_bytes(self._pid or "self")
        peak = max(self.peak_rss, hwm or 0)
        reading = MemoryReading({
            "peak_rss_bytes": peak,
            "peak_rss_sampled_bytes": self.peak_rss,
            "vm_hwm_bytes": hwm,
            "baseline_rss_bytes": self.baseline_rss,
            "peak_rss_delta_bytes": peak - self.baseline_rss,
            "processes_sampled": 1 + self.max_children,
            "cuda_max_allocated_bytes": None,
            "cuda_max_reserved_bytes": None,
            "nvml_peak_process_bytes": self.peak_nvml if self._nvml else None,
        })
        if hwm is None:
            reading.not_applicable["vm_hwm_bytes"] = "no VmHWM in /proc/self/status (not Linux): sampled peak only"
        if _cuda_in_use():
            import torch

            reading.metrics["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            reading.metrics["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
        else:
            reading.not_applicable["cuda"] = "no CUDA device in use by this case"
        if self._nvml_reason:
            reading.not_applicable["nvml"] = self._nvml_reason
        return reading
