"""bench: an LLM inference benchmark and profiling harness (latency, throughput, memory, quality)."""

__version__ = "0.1.0"
