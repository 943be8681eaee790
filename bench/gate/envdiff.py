"""What changed around two runs of a flagged case: the differences between their environments, most relevant first.

For each flagged case (bench/gate/attribution.py), `case_changes` diffs what its two records and their runs'
fingerprints say (bench/run/environment.py), each side read where it is most specific: the case's own record first
(the versions its backend reported, `BackendDescription.versions`; its machine, `CaseRecord.machine`), then the run's
environment (`Environment.distributions`: every installed distribution; older runs: the few `libraries`). `merge`
joins the flagged cases' changes (one row per change, naming the cases it concerns) and orders them by `KINDS`:

1. backend package: a distribution the case's backend reports as what ran it (describe().versions: torch and
   transformers for hf-eager, llama_cpp_python for llama-cpp, onnxruntime(-genai) and onnx for the ONNX backends,
   vllm ...). No table here: a new backend's packages are whatever its describe() reports;
2. hardware and driver: CPU, CPUs, memory, architecture, GPUs, GPU driver and the CUDA version it supports, OS;
3. machine state: what the machine did while each side was measured, where the gate finds it materially different
   (other processes' load, CPU and GPU clocks: bench/gate/machine.py);
4. threads: the suite's threads, the threads the runtime used, thread variables, CPUs the process may use;
5. model and conversion: the model's files (a built-in's recipe hash, a Hub snapshot's repository and revision,
   a local directory's name: `model_identity`), weight bytes, parameters, dtype, quantization (the converter's
   version is its backend's package: gguf's convert, ONNX's builder);
6. what ran: the backend's mechanism, device, attention kernel seen, KV cache;
7. package: every other installed distribution (added or removed ones only where both runs recorded them all);
8. other: Python, host, bench's commit.

Within a kind, a change concerning more flagged cases comes first. Nothing here is a measurement: each row holds the
two sides' recorded values as text.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench.records.schema import CaseRecord, Environment, Machine, MachineState

KINDS = ("backend package", "hardware and driver", "machine state", "threads", "model and conversion", "what ran",
         "package", "other")


class EnvironmentChange(BaseModel):
    """One recorded difference between the two runs of the flagged cases it names."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # one of KINDS: how relevant it is, in that order
    name: str  # a distribution's name, or what the value is ("GPU driver", "threads OMP_NUM_THREADS")
    baseline: str | None  # None: not there (a package not installed, a variable not set)
    current: str | None
    cases: list[str]  # the flagged cases it concerns
    backends: list[str] = []  # backend package: the backends (of those cases) that report it as theirs
    note: str = ""  # machine state: why the gate finds the states materially different, both sides' figures


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares it: llama_cpp_python and llama-cpp-python are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _packages(record: CaseRecord, env: Environment) -> dict[str, tuple[str, str]]:
    """normalized name -> (name as recorded, version), each from the most specific source that has it."""
    sources = [record.backend.versions if record.backend else {}, record.machine.libraries if record.machine else {},
               env.distributions or {}, env.libraries]
    found: dict[str, tuple[str, str]] = {}
    for source in sources:
        for name, version in source.items():
            found.setdefault(normalize(name), (name, str(version)))
    return found


def _package_changes(case: str, base: CaseRecord, cur: CaseRecord, base_env: Environment,
                     cur_env: Environment) -> list[EnvironmentChange]:
    before, after = _packages(base, base_env), _packages(cur, cur_env)
    own = {normalize(n) for r in (base, cur) if r.backend for n in r.backend.versions}
    complete = base_env.distributions is not None and cur_env.distributions is not None
    out = []
    for key in sorted(set(before) | set(after)):
        b, c = before.get(key), after.get(key)
        if (b and c and b[1] == c[1]) or (not (b and c) and not complete and key not in own):
            continue  # alike, or absent from a side that did not record every distribution
        name = (c or b or ("", ""))[0]
        backend = key in own
        out.append(EnvironmentChange(kind="backend package" if backend else "package", name=name,
                                     baseline=b[1] if b else None, current=c[1] if c else None, cases=[case],
                                     backends=[cur.case.backend] if backend else []))
    return out


def _gib(n: int | None) -> str | None:
    return None if n is None else f"{n / 2**30:.1f} GiB"


def _gpus(machine: Machine | None, env: Environment) -> str | None:
    gpus = machine.gpus if machine is not None else env.gpus if isinstance(env.gpus, list) else []
    return ", ".join(f"{g.get('name')} ({_gib(g.get('memory_total_bytes'))})" for g in gpus) or None


def _env_gpu(env: Environment, key: str) -> str | None:
    gpus = env.gpus if isinstance(env.gpus, list) else []
    return str(gpus[0][key]) if gpus and gpus[0].get(key) is not None else None


def model_identity(path: str | None) -> str | None:
    """What names a model's files wherever they are cached: a Hub snapshot's repository and revision
    (`models--Org--Name/snapshots/<revision>`), else the directory's name (a built-in's `<name>-<recipe hash>`), so
    two runners with different home directories do not differ."""
    if not path:
        return None
    found = PurePath(path)
    if found.parent.name == "snapshots" and found.parent.parent.name.startswith("models--"):
        return f"{found.parent.parent.name.removeprefix('models--').replace('--', '/')}@{found.name}"
    return found.name or path


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# kind -> (name, value of a side: (record, its run's environment) -> text or None), in the order shown
Field = Callable[[CaseRecord, Environment], Any]
_FIELDS: dict[str, list[tuple[str, Field]]] = {
    "hardware and driver": [
        ("CPU", lambda r, e: r.machine.cpu_model if r.machine else e.cpu_model),
        ("CPUs", lambda r, e: r.machine.cpu_count if r.machine else e.cpu_count),
        ("memory", lambda r, e: _gib(r.machine.memory_bytes) if r.machine else None),
        ("architecture", lambda r, e: r.machine.architecture if r.machine else None),
        ("GPUs", lambda r, e: _gpus(r.machine, e)),
        ("GPU driver", lambda r, e: (r.machine.gpu_driver if r.machine else None) or _env_gpu(e, "driver")),
        ("CUDA (the driver's)", lambda r, e: _env_gpu(e, "cuda_driver")),
        ("OS", lambda r, e: r.machine.platform if r.machine else e.platform),
    ],
    "threads": [
        ("threads (suite)", lambda r, e: r.case.threads),
        ("threads (runtime)", lambda r, e: r.backend.threads if r.backend else None),
        ("CPUs the process may use", lambda r, e: e.cpu_affinity),
    ],
    "model and conversion": [
        ("model", lambda r, e: model_identity(r.model_path)),
        ("weight bytes", lambda r, e: r.backend.model_size_bytes if r.backend else None),
        ("parameters", lambda r, e: r.backend.n_parameters if r.backend else None),
        ("dtype", lambda r, e: r.backend.dtype if r.backend else None),
        ("quantization", lambda r, e: r.backend.quantization if r.backend else None),
    ],
    "what ran": [
        ("mechanism", lambda r, e: r.backend.mechanism if r.backend else None),
        ("device", lambda r, e: r.backend.device if r.backend else None),
        ("attention kernels seen", lambda r, e: ", ".join(sorted(r.backend.attention.kernel_ops))
         if r.backend and r.backend.attention else None),
        ("KV cache", lambda r, e: r.backend.kv_cache.kind if r.backend and r.backend.kv_cache else None),
    ],
    "other": [
        ("Python", lambda r, e: (r.machine.python if r.machine else None) or e.python),
        ("host", lambda r, e: (r.machine.hostname if r.machine else None) or e.hostname),
        ("bench commit", lambda r, e: e.git_sha),
        ("uncommitted changes", lambda r, e: e.git_dirty),
    ],
}


def _field_changes(case: str, base: CaseRecord, cur: CaseRecord, base_env: Environment,
                   cur_env: Environment) -> list[EnvironmentChange]:
    out = []
    for kind, fields in _FIELDS.items():
        for name, value in fields:
            b, c = _text(value(base, base_env)), _text(value(cur, cur_env))
            if b != c:
                out.append(EnvironmentChange(kind=kind, name=name, baseline=b, current=c, cases=[case]))
        if kind == "threads":
            variables = sorted(set(base_env.thread_env) | set(cur_env.thread_env))
            out += [EnvironmentChange(kind=kind, name=f"${name}", baseline=base_env.thread_env.get(name),
                                      current=cur_env.thread_env.get(name), cases=[case])
                    for name in variables if base_env.thread_env.get(name) != cur_env.thread_env.get(name)]
    return out


def _state(state: MachineState | None) -> str | None:
    if state is None:
        return None
    parts = [f"others kept {state.other_cpu_load_mean:.2f} of {state.cpus} CPUs busy"
             + (" (contended)" if state.contended else "")]
    if state.cpu_mhz_min is not None:
        parts.append(f"CPU {state.cpu_mhz_min:.0f}-{state.cpu_mhz_max or state.cpu_mhz_min:.0f} MHz")
    if state.gpu_clock_mhz_min is not None:
        parts.append(f"GPU SM clock >= {state.gpu_clock_mhz_min:.0f} MHz")
    if state.gpu_other_processes:
        parts.append(f"{state.gpu_other_processes} other process(es) on the GPU")
    return ", ".join(parts)


def case_changes(case: str, base: CaseRecord, cur: CaseRecord, base_env: Environment, cur_env: Environment,
                 machine_reasons: list[str] | None = None, states: tuple[MachineState | None, MachineState | None]
                 = (None, None)) -> list[EnvironmentChange]:
    """Every recorded difference between a flagged case's two sides (unordered: `merge` orders them).

    `machine_reasons`: why the gate finds the sides' machine states materially different (bench/gate/machine.py),
    with the two `states`; none: the states are alike (or not both recorded)."""
    out = _package_changes(case, base, cur, base_env, cur_env) + _field_changes(case, base, cur, base_env, cur_env)
    if machine_reasons:
        out.append(EnvironmentChange(kind="machine state", name="while measured",
                                     baseline=_state(states[0]) or "see the note", current=_state(states[1]) or
                                     "see the note", cases=[case], note="; ".join(machine_reasons)))
    return out


def merge(per_case: Iterable[list[EnvironmentChange]]) -> list[EnvironmentChange]:
    """One row per distinct change (the cases it concerns joined), most relevant first: by `KINDS`, then the more
    flagged cases it concerns, then the order a kind lists its fields in (packages by name)."""
    rows: dict[tuple, EnvironmentChange] = {}
    order: dict[tuple, int] = {}
    for changes in per_case:
        for change in changes:
            key = (change.kind, change.name, change.baseline, change.current, change.note)
            if key in rows:
                row = rows[key]
                row.cases = sorted({*row.cases, *change.cases})
                row.backends = sorted({*row.backends, *change.backends})
            else:
                rows[key] = change.model_copy(deep=True)
                order[key] = len(order)
    position = {name: i for fields in _FIELDS.values() for i, (name, _) in enumerate(fields)}

    def relevance(key: tuple) -> tuple:
        row = rows[key]
        within = row.name.lower() if row.kind.endswith("package") else f"{position.get(row.name, 99):03d}{row.name}"
        return KINDS.index(row.kind), -len(row.cases), within, order[key]

    return [rows[key] for key in sorted(rows, key=relevance)]
