"""Memory-bandwidth utilization (MBU) of decoding: weight bytes read per step over the time per step.

Each decode step reads every weight once, so the achieved bandwidth is at least
model_size_bytes / TPOT; MBU is that over the device's peak bandwidth. The peak is a known number:
the suite's `peak_memory_bandwidth_gbs` when the user states it (the only source for a CPU, whose
bandwidth depends on its memory channels and DIMMs), else the spec sheet of a known GPU, looked up
by the name NVML / CUDA reports. Otherwise MBU is not applicable, with the reason.

A suite may instead say `peak_memory_bandwidth_gbs: measured` (for a CPU): each latency case's process then
measures the host's memory bandwidth itself, after measuring the case (`measure_host_gbs`: STREAM's
"copy" kernel, numpy on one thread, arrays far larger than any cache), so MBU is relative to what this
machine delivered at that time, not to a spec sheet. That is an achieved copy bandwidth, below the DIMMs'
theoretical peak; on a shared machine it varies from case to case, like the TPOT it divides.
"""
from __future__ import annotations

import sys
import time

# Spec-sheet memory bandwidth in GB/s (1e9 bytes/s), keyed by the device name NVML reports with a
# leading "NVIDIA " removed, lower-cased.
GPU_PEAK_GBS: dict[str, float] = {
    "a100-sxm4-40gb": 1555, "a100-pcie-40gb": 1555, "a100-sxm4-80gb": 2039, "a100 80gb pcie": 1935,
    "h100 80gb hbm3": 3350, "h100 pcie": 2000, "h100 nvl": 3900, "h200": 4800,
    "l4": 300, "tesla t4": 320, "a10g": 600, "a10": 600, "l40s": 864, "l40": 864,
    "geforce rtx 4090": 1008, "geforce rtx 3090": 936,
    "tesla v100-sxm2-16gb": 900, "tesla v100-sxm2-32gb": 900, "tesla v100-pcie-16gb": 900,
}


def gpu_peak_gbs(name: str) -> float | None:
    key = name.strip().lower().removeprefix("nvidia ").strip()
    return GPU_PEAK_GBS.get(key)


def _cuda_device_name(device: str) -> str | None:
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    torch = sys.modules.get("torch")  # the backend that used CUDA has imported it; never import it here
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(index)
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    except pynvml.NVMLError:  # no GPU or no driver
        return None


COPY_BYTES = 256 * 2**20  # per array: 8x the 32 MiB L3 of these machines
COPY_REPEATS = 5


def measure_host_gbs(copy_bytes: int = COPY_BYTES, repeats: int = COPY_REPEATS) -> tuple[float, str]:
    """(GB/s, how): the host's copy bandwidth, the best of `repeats` numpy copies of `copy_bytes` on one thread,
    counting 2 bytes moved (one read, one write) per byte copied, as STREAM's copy does."""
    import numpy as np

    src = np.ones(copy_bytes // 8, dtype=np.float64)
    dst = np.zeros_like(src)  # both written once first: no page faults inside the timed copies
    best_ns = None
    for _ in range(repeats):
        start = time.perf_counter_ns()
        np.copyto(dst, src)
        elapsed = time.perf_counter_ns() - start
        best_ns = elapsed if best_ns is None else min(best_ns, elapsed)
    assert best_ns is not None
    gbs = 2 * src.nbytes / (best_ns / 1e9) / 1e9
    return gbs, (f"measured: best of {repeats} numpy copies of {copy_bytes // 2**20} MiB on one thread "
                 f"(STREAM copy, 2 bytes moved per byte), in the case's process after measuring it")


def peak_bandwidth(device: str, stated_gbs: float | None) -> tuple[float | None, str]:
    """(peak GB/s, where it came from) or (None, why it is not known)."""
    if stated_gbs is not None:
        return float(stated_gbs), "suite peak_memory_bandwidth_gbs"
    if device.startswith("cuda"):
        name = _cuda_device_name(device)
        if name is None:
            return None, "the GPU's name could not be read"
        peak = gpu_peak_gbs(name)
        if peak is None:
            return None, f"GPU '{name}' is not in bench/measure/bandwidth.py's table; set peak_memory_bandwidth_gbs"
        return peak, f"spec sheet of {name}"
    return None, f"peak memory bandwidth of device '{device}' is not known; set peak_memory_bandwidth_gbs in the suite"


def mbu(model_size_bytes: int | None, tpot_ms: float | None, peak_gbs: float | None,
        peak_source: str) -> tuple[dict, dict]:
    """(metrics, not_applicable): achieved bandwidth from weight bytes / TPOT, and MBU against the peak."""
    if not model_size_bytes or not tpot_ms:
        return {}, {"mbu": "model size or TPOT unknown", "achieved_bandwidth_gbs": "model size or TPOT unknown"}
    achieved = model_size_bytes / (tpot_ms / 1e3) / 1e9
    metrics = {"achieved_bandwidth_gbs": achieved}
    if peak_gbs is None:
        return metrics, {"mbu": peak_source}
    return {**metrics, "mbu": achieved / peak_gbs, "peak_memory_bandwidth_gbs": peak_gbs}, {}
