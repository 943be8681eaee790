"""Which operators moved: a flagged case's profile (ProfileSummary, bench/measure/profiling.py) on both sides, diffed.

Every figure is per profiled generation, so sides that profiled different numbers of generations compare:
operator totals are divided by the generations they cover (`generations_profiled` for torch.profiler,
`generations_in_totals` for a runtime's own profiler, whose totals include its warm-up). What each profiler allows:

- torch.profiler (the transformers backends): every operator's self time on the CPU, and on the device where traced
  (CUDA), over the prefill and the first `decode_steps` decode steps of each generation; the attention / matmul /
  other split; the traced wall time per generation and the time in it outside operators (wall time minus the
  operators' CPU self time: Python, the generation loop, the framework's dispatch);
- ONNX Runtime's JSON profile (onnx-ort, onnx-genai): each operator type's kernel time over whole generations, timed
  on the host (a CUDA provider's kernels as launched), and the split; no wall time of the loop around the session,
  so no time outside operators;
- llama.cpp's perf counters (llama-cpp): no per-operator times at all: the prompt-eval and eval phases per
  generation.

Operators are ranked by the absolute change of their self time, on the device where both sides traced it, else on
the CPU. A side that recorded every operator (`ProfileSummary.ops`) counts an operator it lacks as 0 ms (it did not
run); a profile from before that, with only its top operators, leaves the others unknown (None).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from bench.measure.profiling import CATEGORIES, category
from bench.records.schema import CaseRecord, ProfileSummary

TOP = 10  # operators listed per case
TORCH = "torch.profiler"  # bench/measure/profiling.py `torch_profile`: its phases are means per generation
Profiled = Literal["both", "baseline only", "current only", "neither"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperatorChange(_Model):
    """One operator's self time per profiled generation on both sides (ms, on the diff's clock)."""

    name: str
    category: str  # attention, matmul or other (bench/measure/profiling.py `category`)
    baseline_ms: float | None  # None: not among the top operators a side without every operator recorded
    current_ms: float | None
    change_ms: float | None
    baseline_calls: float | None = None  # calls per profiled generation
    current_calls: float | None = None


class ProfileSide(_Model):
    """One side's profile of the case, per profiled generation."""

    profiler: str
    generations: int  # the generations its totals cover
    scope: str  # what of each generation the profile covers
    operators_ms: float | None = None  # every operator's self time, on the diff's clock
    split_ms: dict[str, float] | None = None  # attention / matmul / other (CATEGORIES), on the diff's clock
    wall_ms: float | None = None  # traced wall time (torch.profiler: the prefill and traced decode steps)
    outside_operators_ms: float | None = None  # wall time outside operators' CPU self time (Python, loop, dispatch)
    phases_ms: dict[str, float] = {}  # torch: prefill, decode (its traced steps); llama.cpp: prompt eval, eval
    complete: bool = True  # every operator recorded (False: only its top operators)


class OperatorDiff(_Model):
    """A flagged case's operators on both sides: where its time went before and after."""

    case: str
    backend: str
    profiled: Profiled
    clock: Literal["cpu", "device"] = "cpu"  # whose self time the operators are compared by
    baseline: ProfileSide | None = None
    current: ProfileSide | None = None
    operators: list[OperatorChange] = []  # the TOP by absolute change, largest first
    notes: list[str] = []  # what the profiles allow, and why a side has none


def _usable(profile: ProfileSummary | None) -> tuple[bool, str]:
    """Whether a profile has figures, else why not."""
    if profile is None:
        return False, "not profiled"
    if profile.error:
        return False, f"profiling failed ({profile.error})"
    if profile.profiler == "none":
        return False, f"no profiler ({profile.reason or 'the backend has no profiler hook'})"
    if not (profile.generations_in_totals or profile.generations_profiled):
        return False, f"no generation profiled ({profile.traces_dropped or 'none kept'})"
    return True, ""


def _generations(profile: ProfileSummary) -> int:
    return profile.generations_in_totals or profile.generations_profiled or 0


def _scope(profile: ProfileSummary) -> str:
    if profile.profiler == TORCH:
        return f"the prefill and the first {profile.decode_steps} decode steps of each generation"
    return "whole generations, the profiler's warm-up included"


def _operators(profile: ProfileSummary, clock: str) -> dict[str, tuple[float, float]]:
    """name -> (self ms, calls) per generation, on `clock`."""
    n, key = _generations(profile), f"self_{clock}_us"
    rows = ([op.model_dump() for op in profile.ops] if profile.ops is not None else profile.top_ops or [])
    return {op["name"]: ((op.get(key) or 0.0) / n / 1e3, op["calls"] / n) for op in rows}


def side(profile: ProfileSummary, clock: str) -> ProfileSide:
    """A profile's figures per profiled generation, its operators' on `clock`."""
    n = _generations(profile)
    total_us = profile.ops_self_device_us if clock == "device" else profile.ops_self_cpu_us
    operators_ms = total_us / n / 1e3 if total_us else None
    shares = (profile.shares or {}).get(clock)
    split = {c: shares[c] * operators_ms for c in CATEGORIES} if shares and operators_ms else None
    per_generation = profile.profiler == TORCH  # a runtime's phases are totals over its generations
    phases = {k: v if per_generation else v / n for k, v in (profile.phases_ms or {}).items() if v is not None}
    wall = profile.step_wall_ms if per_generation else None
    cpu_ms = profile.ops_self_cpu_us / n / 1e3 if profile.ops_self_cpu_us else None
    return ProfileSide(profiler=profile.profiler, generations=n, scope=_scope(profile), operators_ms=operators_ms,
                       split_ms=split, wall_ms=wall, outside_operators_ms=wall - cpu_ms if wall and cpu_ms else None,
                       phases_ms=phases, complete=profile.ops is not None)


def _changes(base: ProfileSummary, cur: ProfileSummary, clock: str, top: int) -> list[OperatorChange]:
    before, after = _operators(base, clock), _operators(cur, clock)
    absent = {"baseline": 0.0 if base.ops is not None else None, "current": 0.0 if cur.ops is not None else None}
    rows = []
    for name in set(before) | set(after):
        b = before[name][0] if name in before else absent["baseline"]
        c = after[name][0] if name in after else absent["current"]
        rows.append(OperatorChange(name=name, category=category(name), baseline_ms=b, current_ms=c,
                                   change_ms=c - b if b is not None and c is not None else None,
                                   baseline_calls=before[name][1] if name in before else None,
                                   current_calls=after[name][1] if name in after else None))
    rows.sort(key=lambda r: (r.change_ms is None, -abs(r.change_ms or 0.0), r.name))
    return rows[:top]


def diff(case: str, base: CaseRecord, cur: CaseRecord, top: int = TOP) -> OperatorDiff:
    """The case's operator diff; `profiled` says which sides have a usable profile, `notes` why not and what the
    profiler allows."""
    (b_ok, b_why), (c_ok, c_why) = _usable(base.profile), _usable(cur.profile)
    profiled: Profiled = "both" if b_ok and c_ok else "baseline only" if b_ok else "current only" if c_ok else \
        "neither"
    out = OperatorDiff(case=case, backend=cur.case.backend, profiled=profiled)
    out.notes += [f"{which}: {why}" for which, ok, why in (("baseline", b_ok, b_why), ("current", c_ok, c_why))
                  if not ok]
    if profiled != "both":
        return out
    assert base.profile is not None and cur.profile is not None
    out.clock = "device" if base.profile.ops_self_device_us and cur.profile.ops_self_device_us else "cpu"
    out.baseline, out.current = side(base.profile, out.clock), side(cur.profile, out.clock)
    out.operators = _changes(base.profile, cur.profile, out.clock, top)
    if out.baseline.scope != out.current.scope:
        out.notes.append(f"the sides profiled different parts of each generation ({out.baseline.scope} vs "
                         f"{out.current.scope}): their figures are not like for like")
    if not out.operators:
        out.notes.append(f"{cur.profile.profiler} times no operators: phases only")
    elif not (out.baseline.complete and out.current.complete):
        out.notes.append("a side recorded only its top operators (a profile from before bench kept them all): an "
                         "operator not among them is unknown there")
    if out.operators and out.current.outside_operators_ms is None:
        out.notes.append(f"{cur.profile.profiler} times the runtime's own work, not the loop around it: no time "
                         f"outside operators")
    return out
