"""Where the time goes: profile a latency case after it was measured, and summarize the profile.

Profiling is a separate phase of a latency case, run by the worker after the timed repetitions and
after the memory sampler stopped, so it never perturbs the measured numbers. It repeats the case's
generation (same prompts, same new tokens): `warmup` generations the profiler traces and discards,
then `steps` kept ones. It is bounded: torch.profiler traces only the prefill and the first
`decode_steps` decode steps of each generation, traces are written gzipped, and a case's trace bytes
stay within `max_trace_mb` (a trace that would pass it is dropped, and the summary says so).

- Backends whose `profiles_with_torch` is true (the transformers ones) are traced with
  `torch.profiler`, one profiler per generation (ranges `bench/prefill`, up to the first token, and
  `bench/decode`, the traced decode steps), written with `tensorboard_trace_handler(use_gzip=True)` to
  `results/<run-id>/traces/<case-id>/`, which TensorBoard's PyTorch profiler plugin opens:
  `tensorboard --logdir results/<run-id>/traces`.
- Other backends profile with their runtime's own profiler through `Backend.native_profile`
  (ONNX Runtime's JSON profile, llama.cpp's perf counters); the default is none.

The summary lists the top operators by self time (time inside the operator, not in operators it
called) on the CPU and, where traced, on the device, keeps every operator's totals (`ops`: what the
operator diff between two runs reads, bench/gate/opdiff.py), and splits operator self time into
attention / matmul / other by operator name (see `category`).
"""
from __future__ import annotations

import gzip
import re
import shutil
import time
import traceback
from collections import defaultdict
from pathlib import Path

from bench.records import safe_files
from bench.records.schema import CaseSpec, ProfileSummary

CATEGORIES = ("attention", "matmul", "other")
# By operator name, case-insensitive, namespace ("aten::") stripped; attention is tested first.
_ATTENTION = re.compile(r"attention|attn|sdpa|scaled_dot_product|softmax|flash")
_MATMUL = re.compile(r"matmul|gemm|gemv|mul_mat|linear|einsum|^_?(mm|bmm|addmm|baddbmm|addbmm|mv|dot)$|_mm$")
# Ranges bench itself marks (and the profiler's step ranges): not operators.
_MARKERS = re.compile(r"^(ProfilerStep|bench/)")


def category(op_name: str) -> str:
    """attention, matmul or other, from an operator's name alone.

    attention: the name contains attention, attn, sdpa, scaled_dot_product, softmax or flash
    (aten::_scaled_dot_product_flash_attention_for_cpu, aten::_softmax, ORT GroupQueryAttention);
    matmul: matmul, gemm, gemv, mul_mat, linear or einsum, or is mm/bmm/addmm/baddbmm/addbmm/mv/dot
    or ends in _mm (aten::mm, aten::addmm, ORT MatMulNBits, quantized linear);
    other: everything else. By name only: the two matmuls inside eager attention (aten::bmm)
    count as matmul, the fused SDPA kernel as attention.
    """
    bare = op_name.rsplit("::", 1)[-1].lower()
    if _ATTENTION.search(bare):
        return "attention"
    if _MATMUL.search(bare):
        return "matmul"
    return "other"


def summarize_ops(ops: list[dict], top: int) -> dict:
    """Top operators and category shares from per-operator totals.

    ops: [{"name", "calls", "self_cpu_us", optional "self_device_us"}], one per operator name.
    Shares are fractions (0..1) of the summed self time of all operators.
    """
    merged: dict[str, dict] = {}  # one entry per operator name (a runtime may write several profile files)
    for op in ops:
        if not _MARKERS.match(op["name"]):
            entry = merged.setdefault(op["name"], {"name": op["name"], "calls": 0})
            entry["calls"] += op["calls"]
            for key in ("self_cpu_us", "self_device_us"):
                if op.get(key) is not None:
                    entry[key] = entry.get(key, 0) + op[key]
    ops = list(merged.values())
    out: dict = {"n_operators": len(ops)}
    for kind in ("cpu", "device"):
        key = f"self_{kind}_us"
        total = sum(op.get(key) or 0 for op in ops)
        out[f"ops_{key}"] = total if total > 0 else None
        if total <= 0:
            out.setdefault("shares", {})[kind] = None
            continue
        by_category: dict[str, float] = defaultdict(float)
        for op in ops:
            by_category[category(op["name"])] += op.get(key) or 0
        out.setdefault("shares", {})[kind] = {c: by_category[c] / total for c in CATEGORIES}
    rank = "self_device_us" if out["ops_self_device_us"] else "self_cpu_us"
    ranked = sorted(ops, key=lambda op: op.get(rank) or 0, reverse=True)
    out["ops"] = [{key: op.get(key) for key in ("name", "calls", "self_cpu_us", "self_device_us")} for op in ranked]
    rows = ranked[:top]
    out["top_ops"] = [{
        "name": op["name"], "category": category(op["name"]), "calls": op["calls"],
        "self_cpu_us": op.get("self_cpu_us"),
        "self_cpu_share": (op.get("self_cpu_us") or 0) / out["ops_self_cpu_us"] if out["ops_self_cpu_us"] else None,
        "self_device_us": op.get("self_device_us"),
        "self_device_share": ((op.get("self_device_us") or 0) / out["ops_self_device_us"]
                              if out["ops_self_device_us"] else None),
    } for op in rows]
    return out


# ---------------------------------------------------------------- running the profile

class _Ranges:
    """`bench/prefill` until the first token, then `bench/decode` over `decode_steps` tokens; then `done()`."""

    def __init__(self, record_function, decode_steps: int, on_done) -> None:
        self.record_function, self.decode_steps, self.on_done = record_function, decode_steps, on_done
        self.tokens = 0
        self.range = record_function("bench/prefill")
        self.range.__enter__()

    def _close(self) -> None:
        if self.range is not None:
            self.range.__exit__(None, None, None)
            self.range = None

    def on_token(self) -> None:
        self.tokens += 1
        if self.tokens == 1:
            self._close()
            if self.decode_steps:
                self.range = self.record_function("bench/decode")
                self.range.__enter__()
        if self.tokens == 1 + self.decode_steps:
            self.done()

    def done(self) -> None:
        if self.on_done is not None:
            self._close()
            self.on_done()
            self.on_done = None


def _trace_bytes(out_dir: Path) -> int:
    return sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())


def torch_profile(backend, prompts, new_tokens: int, settings: dict, out_dir: Path, worker_name: str) -> dict:
    """Trace the prefill and the first `decode_steps` decode steps of `steps` generations with torch.profiler.

    One profiler per generation, started before the prompt and stopped from the token callback, so the rest
    of the generation runs untraced: a trace's size does not grow with new_tokens. `warmup` generations are
    traced and discarded first (the profiler's own first-use costs land there). Traces are written gzipped
    in TensorBoard's format; once their bytes would pass `max_trace_mb`, the last one is deleted and
    profiling stops, and the summary says so."""
    from torch.profiler import ProfilerActivity, profile, record_function, tensorboard_trace_handler

    on_cuda = str(backend.device).startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    decode_steps = min(settings["decode_steps"], new_tokens - 1)
    budget = int(settings["max_trace_mb"] * 1e6)
    ops: list[dict] = []
    ranges: dict[str, list[float]] = defaultdict(list)
    profiled, dropped = 0, None
    for i in range(settings["warmup"] + settings["steps"]):
        keep = i >= settings["warmup"]
        before = {p for p in out_dir.rglob("*") if p.is_file()}
        handler = tensorboard_trace_handler(str(out_dir), worker_name=worker_name, use_gzip=True) if keep else None
        prof = profile(activities=activities, on_trace_ready=handler, record_shapes=settings["record_shapes"],
                       profile_memory=settings["profile_memory"], with_stack=settings["with_stack"])
        prof.start()
        marks = _Ranges(record_function, decode_steps, prof.stop)
        try:
            backend.generate(prompts, new_tokens, marks.on_token)
        finally:
            marks.done()
        if not keep:
            continue
        if _trace_bytes(out_dir) > budget:
            for path in {p for p in out_dir.rglob("*") if p.is_file()} - before:
                path.unlink()
            dropped = (f"trace {profiled + 1} was dropped: it would bring the case's traces past their budget of "
                       f"{settings['max_trace_mb']:g} MB (profile.max_trace_mb); {profiled} trace(s) kept")
            break
        profiled += 1
        for e in prof.key_averages():
            if _MARKERS.match(e.key):
                ranges[e.key].append(e.cpu_time_total / max(e.count, 1) / 1e3)
            ops.append({"name": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
                        "self_device_us": getattr(e, "self_device_time_total", None) if on_cuda else None})
    phases = {"prefill": _mean(ranges.get("bench/prefill")), "decode": _mean(ranges.get("bench/decode"))}
    summary = {"profiler": "torch.profiler", "activities": [a.name for a in activities],
               "decode_steps": decode_steps, "generations_profiled": profiled, "traces_dropped": dropped,
               "step_wall_ms": sum(v for v in phases.values() if v is not None) or None,
               "phases_ms": phases, **summarize_ops(ops, settings["top"])}
    if summary["step_wall_ms"] and summary["ops_self_cpu_us"] and profiled:
        # aten ops run on the calling thread, so this is the share of the traced time spent inside operators
        summary["ops_share_of_step"] = summary["ops_self_cpu_us"] / profiled / 1e3 / summary["step_wall_ms"]
    return summary


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def compress_and_budget(out_dir: Path, budget_bytes: int) -> tuple[int, str | None]:
    """Gzip a runtime's plain trace files in place, then drop the largest until the budget holds.

    Returns (bytes kept, why files were dropped or None)."""
    for path in [p for p in out_dir.rglob("*") if p.is_file() and p.suffix == ".json"]:
        with open(path, "rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()
    dropped = []
    files = sorted((p for p in out_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    while files and sum(p.stat().st_size for p in files) > budget_bytes:
        largest = files.pop()
        dropped.append(f"{largest.name} ({largest.stat().st_size / 1e6:.1f} MB)")
        largest.unlink()
    reason = (f"dropped {', '.join(dropped)} to keep the case's traces within {budget_bytes / 1e6:g} MB "
              f"(profile.max_trace_mb)") if dropped else None
    return _trace_bytes(out_dir), reason


def native_profile(backend, prompts, new_tokens: int, settings: dict, out_dir: Path) -> dict:
    """Profile generations with the backend's own profiler hook: `warmup` + `steps` of them, all counted.

    The hooks (ONNX Runtime, llama.cpp) can only enable profiling on a new session or context, which
    they open on entry; warming up outside would warm a different session, so the warm-up runs inside
    and the totals include it (the summary says how many generations they cover)."""
    with backend.native_profile(out_dir) as summary:
        if summary.get("profiler", "none") != "none":  # a runtime profiler records from the hook's start,
            for _ in range(settings["warmup"] + settings["steps"]):
                backend.generate(prompts, new_tokens, lambda: None)
    summary = dict(summary)
    if summary.get("profiler", "none") != "none":
        summary["generations_in_totals"] = settings["warmup"] + settings["steps"]
    if summary.get("ops"):
        summary.update(summarize_ops(summary.pop("ops"), settings["top"]))
    _, summary["traces_dropped"] = compress_and_budget(out_dir, int(settings["max_trace_mb"] * 1e6))
    return summary


def profile_case(case: CaseSpec, backend, prompts: list[list[int]], trace_dir: Path) -> ProfileSummary:
    """The case's profile summary; a profiling error is recorded in it, never fails the measured case."""
    assert case.profile is not None and case.workload is not None
    settings, new_tokens = case.profile.model_dump(), case.workload.new_tokens
    began = time.monotonic()
    summary: dict = {"settings": settings, "steps": settings["steps"], "trace_dir": f"traces/{trace_dir.name}",
                     "phase": "after measurement (separate from the timed repetitions and the memory sampler)"}
    try:
        safe_files.makedirs(trace_dir, trace_dir.parent.parent)  # traces/<case> under the run, no link followed
        if getattr(backend, "profiles_with_torch", False):
            summary.update(torch_profile(backend, prompts, new_tokens, settings, trace_dir, case.id[:60]))
        else:
            summary.update(native_profile(backend, prompts, new_tokens, settings, trace_dir))
    except Exception as exc:  # noqa: BLE001 -- the measurement stands; record why there is no profile
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"
    summary["files"] = sorted(str(p.relative_to(trace_dir)) for p in trace_dir.rglob("*") if p.is_file()) \
        if trace_dir.exists() else []
    summary["trace_bytes"] = _trace_bytes(trace_dir) if trace_dir.exists() else 0
    summary["trace_budget_bytes"] = int(settings["max_trace_mb"] * 1e6)
    summary["profile_seconds"] = time.monotonic() - began
    return ProfileSummary.model_validate(summary)
