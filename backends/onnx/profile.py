"""ONNX Runtime's own profiler output, read back as per-operator totals for bench's profile summary."""
from __future__ import annotations

import json
from pathlib import Path


def ort_profile_ops(path: Path | str) -> list[dict]:
    """Per-operator totals from an ONNX Runtime JSON profile (SessionOptions.enable_profiling).

    Kernel events are `{"cat": "Node", "name": "<node>_kernel_time", "dur": us, "args": {"op_name"}}`;
    they are summed per op type (MatMul, GroupQueryAttention, ...). ORT runs kernels on the CPU
    threads it times, so their durations are CPU self times; a CUDA provider's kernels are timed as
    launched from the host (ORT's profile has no separate device timeline here).
    """
    events = json.loads(Path(path).read_text())
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    totals: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = (event.get("args") or {}).get("op_name") or event["name"]
        entry = totals.setdefault(op, {"name": op, "calls": 0, "self_cpu_us": 0.0})
        entry["calls"] += 1
        entry["self_cpu_us"] += float(event.get("dur", 0))
    return list(totals.values())
