"""Where the time goes: profile a latency case after it was measured, and summarize the profile.

Profiling is a separate phase of a latency case, run by the worker after the timed repetitions and
after the memory sampler stopped, so it never perturbs the measured numbers. It repeats the case's
generation (same prompts, same new tokens): `warmup` generations the profiler traces and discards,
then `steps` active ones.

- Backends whose `profiles_with_torch` is true (the transformers ones) are traced with
  `torch.profiler` on a schedule (one profiler step per generation; the ranges `bench/prefill`,
  up to the first token, and `bench/decode`, the rest, are marked inside each step) and written with
  `tensorboard_trace_handler` to `results/<run-id>/traces/<case-id>/`, which TensorBoard's
  PyTorch profiler plugin opens: `tensorboard --logdir results/<run-id>/traces`.
- Other backends profile with their runtime's own profiler through `Backend.native_profile`
  (ONNX Runtime's JSON profile, llama.cpp's perf counters); the default is none.

The summary lists the top operators by self time (time inside the operator, not in operators it
called) on the CPU and, where traced, on the device, and splits operator self time into
attention / matmul / other by operator name (see `category`).
"""
from __future__ import annotations

import re
import time
import traceback
from collections import defaultdict
from pathlib import Path

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
    rows = sorted(ops, key=lambda op: op.get(rank) or 0, reverse=True)[:top]
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

def _generate_annotated(backend, prompts, new_tokens: int, record_function) -> None:
    """One generation with `bench/prefill` (until the first token) and `bench/decode` ranges."""
    state = {"range": record_function("bench/prefill"), "first": True}
    state["range"].__enter__()

    def on_token() -> None:
        if state["first"]:
            state["first"] = False
            state["range"].__exit__(None, None, None)
            state["range"] = record_function("bench/decode")
            state["range"].__enter__()

    try:
        backend.generate(prompts, new_tokens, on_token)
    finally:
        state["range"].__exit__(None, None, None)


def torch_profile(backend, prompts, new_tokens: int, settings: dict, out_dir: Path, worker_name: str) -> dict:
    """Trace `warmup` + `steps` generations with torch.profiler into out_dir (TensorBoard format)."""
    from torch.profiler import ProfilerActivity, profile, record_function, schedule, tensorboard_trace_handler

    on_cuda = str(backend.device).startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities,
                 schedule=schedule(wait=0, warmup=settings["warmup"], active=settings["steps"], repeat=1),
                 on_trace_ready=tensorboard_trace_handler(str(out_dir), worker_name=worker_name),
                 record_shapes=settings["record_shapes"], profile_memory=settings["profile_memory"],
                 with_stack=settings["with_stack"]) as prof:
        for _ in range(settings["warmup"] + settings["steps"]):
            _generate_annotated(backend, prompts, new_tokens, record_function)
            prof.step()
    events = prof.key_averages()
    ranges = {e.key: e.cpu_time_total / max(e.count, 1) / 1e3 for e in events if _MARKERS.match(e.key)}
    ops = [{"name": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
            "self_device_us": getattr(e, "self_device_time_total", None) if on_cuda else None} for e in events]
    summary = {"profiler": "torch.profiler", "activities": [a.name for a in activities],
               "step_wall_ms": ranges.get("ProfilerStep*"),
               "phases_ms": {"prefill": ranges.get("bench/prefill"), "decode": ranges.get("bench/decode")},
               **summarize_ops(ops, settings["top"])}
    if summary["step_wall_ms"] and summary["ops_self_cpu_us"]:
        # aten ops run on the calling thread, so this is the share of the step spent inside operators
        summary["ops_share_of_step"] = summary["ops_self_cpu_us"] / settings["steps"] / 1e3 / summary["step_wall_ms"]
    return summary


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
    return summary


def profile_case(case: CaseSpec, backend, prompts: list[list[int]], trace_dir: Path) -> ProfileSummary:
    """The case's profile summary; a profiling error is recorded in it, never fails the measured case."""
    assert case.profile is not None and case.workload is not None
    settings, new_tokens = case.profile.model_dump(), case.workload.new_tokens
    began = time.monotonic()
    summary: dict = {"settings": settings, "steps": settings["steps"], "trace_dir": f"traces/{trace_dir.name}",
                     "phase": "after measurement (separate from the timed repetitions and the memory sampler)"}
    try:
        trace_dir.mkdir(parents=True, exist_ok=True)
        if getattr(backend, "profiles_with_torch", False):
            summary.update(torch_profile(backend, prompts, new_tokens, settings, trace_dir, case.id[:60]))
        else:
            summary.update(native_profile(backend, prompts, new_tokens, settings, trace_dir))
    except Exception as exc:  # noqa: BLE001 -- the measurement stands; record why there is no profile
        traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"
    summary["files"] = sorted(str(p.relative_to(trace_dir)) for p in trace_dir.rglob("*") if p.is_file()) \
        if trace_dir.exists() else []
    summary["profile_seconds"] = time.monotonic() - began
    return ProfileSummary.model_validate(summary)
