"""Energy per token, where the hardware has an energy counter: NVML's total-energy counter per GPU
(`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded; what ML.ENERGY's Zeus reads) and RAPL's
package counters under /sys/class/powercap (`energy_uj`, wrapping at `max_energy_range_uj`), where readable.

Measured after the latency measurement, in the same process and on the same batch (never inside the timed
generations): first the idle power (the counters over `idle_seconds` of sleep), then prefill calls
(`generate(prompts, 1)`: the prompt and one sampling step, as TTFT) and whole generations
(`generate(prompts, new_tokens)`), each repeated for at least `phase_seconds`. Idle energy (idle power x the
phase's time) is subtracted and stated. Per call, above idle:

    prefill J/token = E(prefill call) / (batch x prompt tokens)
    decode  J/token = (E(generation) - E(prefill call)) / (batch x (new tokens - 1))

and tokens/J is the inverse. Where no counter is readable nothing is measured and the case says
"no energy counter" with the reason: never an estimate from a TDP table.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.records.schema import EnergyInfo, EnergyPhase

POWERCAP_ROOT = "BENCH_POWERCAP_ROOT"  # where the powercap tree is (default /sys/class/powercap; tests: a fake)
PHASE_SECONDS = "BENCH_ENERGY_SECONDS"  # seconds per measured phase (default 2; 0: do not measure energy)
DEFAULT_PHASE_SECONDS = 2.0
IDLE_SECONDS = 1.0
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # top-level zones (packages); sub-zones (core, dram) are inside them


class RaplZone:
    """One RAPL package zone: cumulative joules since it was opened, across the counter's wraparound."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        label = (self.path / "name").read_text().strip() if (self.path / "name").exists() else self.path.name
        self.name = f"rapl {self.path.name} ({label})"
        self.range_uj = int((self.path / "max_energy_range_uj").read_text())
        self._last = self._raw()
        self._total_uj = 0

    def _raw(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def read_j(self) -> float:
        now = self._raw()
        delta = now - self._last
        if delta < 0:  # wrapped (at most once between two reads: a wrap takes minutes at a package's power)
            delta += self.range_uj
        self._last, self._total_uj = now, self._total_uj + delta
        return self._total_uj / 1e6


class NvmlGpu:
    """One GPU's total-energy counter (mJ since the driver loaded)."""

    def __init__(self, nvml, index: int) -> None:
        self.nvml = nvml
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(self.handle)
        self.name = f"nvml gpu {index} ({name.decode() if isinstance(name, bytes) else name})"
        self._first = nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # raises where not supported

    def read_j(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._first) / 1e3


def rapl_zones(root: Path | None = None) -> tuple[list[RaplZone], str | None]:
    """Readable RAPL package zones under the powercap tree, or the reason there are none."""
    root = Path(root or os.environ.get(POWERCAP_ROOT) or "/sys/class/powercap")
    if not root.is_dir():
        return [], f"no {root} (no RAPL)"
    zones, unreadable = [], []
    for path in sorted(root.iterdir()):
        if not _PACKAGE_ZONE.match(path.name):
            continue
        if (path / "name").exists() and (path / "name").read_text().strip() == "psys":
            continue  # the platform zone contains the packages: counting both would count twice
        try:
            zones.append(RaplZone(path))
        except (OSError, ValueError) as exc:
            unreadable.append(f"{path.name}: {getattr(exc, 'strerror', None) or exc}")
    if zones:
        return zones, None
    return [], (f"RAPL zones under {root} not readable ({'; '.join(unreadable)})" if unreadable
                else f"no RAPL package zone under {root}")


def _visible(nvml, count: int) -> list[int]:
    """NVML indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES as indices or UUIDs), else all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return list(range(count))
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if all(v.isdigit() for v in wanted):
        return [int(v) for v in wanted if int(v) < count]
    uuids = {}
    for i in range(count):
        uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
        uuids[uuid.decode() if isinstance(uuid, bytes) else uuid] = i
    return [uuids[v] for v in wanted if v in uuids]


def nvml_gpus(nvml=None) -> tuple[list[NvmlGpu], str | None]:
    """GPUs with a readable total-energy counter (pynvml imported here, lazily), or the reason there are none."""
    if nvml is None:
        try:
            import pynvml  # nvidia-ml-py (extra `gpu`)
        except ImportError:
            return [], "no NVML (pynvml not installed: pip install 'bench[gpu]')"
        nvml = pynvml
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound etc.: no GPU here
        return [], f"no NVML GPU ({type(exc).__name__})"
    gpus, unsupported = [], []
    for index in _visible(nvml, count):
        try:
            gpus.append(NvmlGpu(nvml, index))
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported: pre-Volta GPUs have no energy counter
            unsupported.append(f"gpu {index}: {type(exc).__name__}")
    if gpus:
        return gpus, None
    return [], f"no NVML energy counter ({'; '.join(unsupported) or 'no GPU'})"


def counters(powercap_root: Path | None = None, nvml=None) -> tuple[list, str | None]:
    """Every readable counter (GPUs first), or why there is none ("no energy counter: ...")."""
    gpus, no_gpu = nvml_gpus(nvml)
    zones, no_rapl = rapl_zones(powercap_root)
    found = [*gpus, *zones]
    return found, None if found else f"no energy counter: {no_gpu}; {no_rapl}"


@dataclass
class Meter:
    """Reads a set of counters around a block of work; `clock` and `sleep` are injectable for tests."""

    counters: list
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep

    def _read(self) -> dict[str, float]:
        return {c.name: c.read_j() for c in self.counters}

    def idle(self, seconds: float) -> EnergyPhase:
        before, began = self._read(), self.clock()
        self.sleep(seconds)
        after, ended = self._read(), self.clock()
        return EnergyPhase(calls=0, tokens=0, seconds=ended - began, joules={k: after[k] - before[k] for k in after})

    def phase(self, call: Callable[[], None], seconds: float, tokens_per_call: int) -> EnergyPhase:
        """Repeat `call` until at least `seconds` have passed (at least once)."""
        calls = 0
        before, began = self._read(), self.clock()
        while calls == 0 or self.clock() - began < seconds:
            call()
            calls += 1
        after, ended = self._read(), self.clock()
        return EnergyPhase(calls=calls, tokens=calls * tokens_per_call, seconds=ended - began,
                           joules={k: after[k] - before[k] for k in after})


def above_idle(phase: EnergyPhase, idle_w: float) -> float:
    """Joules per call above idle: the phase's energy minus idle power x its time, over its calls."""
    return (sum(phase.joules.values()) - idle_w * phase.seconds) / phase.calls


def measure(generate: Callable[[int], None], batch: int, prompt_tokens: int, new_tokens: int, meter: Meter,
            phase_seconds: float = DEFAULT_PHASE_SECONDS,
            idle_seconds: float = IDLE_SECONDS) -> tuple[dict[str, float], EnergyInfo, dict[str, str]]:
    """(metrics, what was measured, metrics not applicable with why). `generate(n)`: one call generating n tokens."""
    idle = meter.idle(idle_seconds)
    idle_w = sum(idle.joules.values()) / idle.seconds
    prefill = meter.phase(lambda: generate(1), phase_seconds, batch * prompt_tokens)
    whole = meter.phase(lambda: generate(new_tokens), phase_seconds, batch * (new_tokens - 1))
    prefill_j = above_idle(prefill, idle_w)
    decode_j = above_idle(whole, idle_w) - prefill_j
    per_token = {"energy_prefill_j_per_token": prefill_j / (batch * prompt_tokens)}
    if new_tokens > 1:
        per_token["energy_decode_j_per_token"] = decode_j / (batch * (new_tokens - 1))
    metrics: dict[str, float] = {"energy_idle_w": idle_w, **per_token}
    not_applicable = {}
    for name, value in per_token.items():
        inverse = name.replace("_j_per_token", "_tok_per_j")
        if value > 0:
            metrics[inverse] = 1 / value
        else:
            not_applicable[inverse] = (f"{name} is {value:.3g} J/token: no energy above idle was resolved (the "
                                       f"counters' resolution or idle drift exceeds the work's energy)")
    info = EnergyInfo(counters=[c.name for c in meter.counters], idle=idle, idle_power_w=idle_w, prefill=prefill,
                      generation=whole,
                      method="idle power subtracted; prefill: generate(prompt, 1 token) calls; decode: whole "
                             "generations minus a prefill call, per token after the first (bench/measure/energy.py)")
    return metrics, info, not_applicable


def measure_into(result, backend, prompts: list[list[int]], new_tokens: int, found: tuple | None = None,
                 meter_options: dict | None = None) -> None:
    """The worker's hook: energy metrics into a latency case's result, or why there are none."""
    seconds = float(os.environ.get(PHASE_SECONDS, DEFAULT_PHASE_SECONDS))
    if seconds <= 0:
        result.not_applicable["energy"] = f"energy not measured ({PHASE_SECONDS}=0)"
        return
    available, why_not = found if found is not None else counters()
    if not available:
        result.not_applicable["energy"] = str(why_not)
        return
    metrics, info, unknown = measure(lambda n: backend.generate(prompts, n, lambda: None), len(prompts),
                                     len(prompts[0]), new_tokens, Meter(available, **(meter_options or {})), seconds)
    result.metrics.update(metrics)
    result.energy = info
    result.not_applicable.update(unknown)
