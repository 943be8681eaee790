"""The one memory sampler every case runs under: peak RSS, and CUDA / NVML peaks where a GPU exists.

A background thread samples the process RSS (psutil) and, when NVML is available, the GPU memory
NVML attributes to this process. On stop, the sampled maxima are combined with the kernel's own
high-water mark (ru_maxrss) and torch's CUDA allocator peaks. Anything that does not apply on this
machine is reported as None with the reason in `not_applicable`, never as an error or a zero.
"""
from __future__ import annotations

import os
import resource
import sys
import threading

import psutil

SAMPLE_INTERVAL_S = 0.005


def _nvml_handle():
    """(nvml module, device handles) or (None, reason)."""
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


class MemorySampler:
    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_rss = 0
        self.peak_rss = 0
        self._nvml, self._nvml_reason = _nvml_handle()
        self.peak_nvml = 0

    def _nvml_process_bytes(self) -> int:
        pynvml, handles = self._nvml
        pid, total = os.getpid(), 0
        for handle in handles:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return total

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        if self._nvml:
            self.peak_nvml = max(self.peak_nvml, self._nvml_process_bytes())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> "MemorySampler":
        self.baseline_rss = self._process.memory_info().rss
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        peak = max(self.peak_rss, ru_maxrss)
        result = {
            "peak_rss_bytes": peak,
            "peak_rss_sampled_bytes": self.peak_rss,
            "ru_maxrss_bytes": ru_maxrss,
            "baseline_rss_bytes": self.baseline_rss,
            "peak_rss_delta_bytes": peak - self.baseline_rss,
            "cuda_max_allocated_bytes": None,
            "cuda_max_reserved_bytes": None,
            "nvml_peak_process_bytes": self.peak_nvml if self._nvml else None,
            "not_applicable": {},
        }
        if _cuda_in_use():
            import torch

            result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
        else:
            result["not_applicable"]["cuda"] = "no CUDA device in use by this case"
        if not self._nvml:
            result["not_applicable"]["nvml"] = self._nvml_reason
        return result
