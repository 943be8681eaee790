"""The memory sampler sees a known allocation, and says why GPU memory does not apply here."""
import numpy as np

from bench.memory import MemorySampler


def test_peak_rss_includes_a_known_allocation():
    sampler = MemorySampler().start()
    block = np.ones(256 * 1024 * 1024 // 8)  # 256 MiB, touched
    del block
    result = sampler.stop()
    assert result["peak_rss_delta_bytes"] >= 250 * 1024 * 1024
    assert result["peak_rss_bytes"] >= result["baseline_rss_bytes"] + 250 * 1024 * 1024


def test_gpu_metrics_are_not_applicable_without_a_gpu_rather_than_zero():
    result = MemorySampler().start().stop()
    assert result["cuda_max_allocated_bytes"] is None
    assert "cuda" in result["not_applicable"]
    if result["nvml_peak_process_bytes"] is None:
        assert result["not_applicable"]["nvml"].startswith(("NVML unavailable", "pynvml not installed"))
