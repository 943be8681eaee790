"""Load: arrival schedules, the closed and the open loop, runaway detection, and the sweep's plan.

- Closed loop: `concurrency` users; each sends its next request when its last one finished. A request's
  scheduled time is its send time (there is no schedule to fall behind).
- Open loop: arrival times drawn once per level (seeded): gamma inter-arrival gaps with shape
  `burstiness` and scale 1/(rate x burstiness) (burstiness 1 = Poisson), or constant gaps. Each
  request sleeps until its scheduled time, then, under a concurrency ceiling, waits for a free slot
  (AIPerf's sleep-then-gate; a held-back request is late, and no catch-up burst follows). Its lag =
  actual send - scheduled send.
- Every level is bounded: `requests` requests, no new send after `max_seconds`, each request at most
  the request timeout. It stops early when the server exits, or when its requests run away (too many
  errors, or latency far above the floor): in-flight requests are then cancelled and counted.
- The sweep (GuideLLM's): a synchronous level (one user: the latency floor), a throughput level
  (many users: the ceiling), then open-loop rates evenly spaced between the two measured request rates.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.records.schema import LoadLevel, RunawayLimits, SweepSettings
from bench.serving.traffic.client import Outcome, Target, send
from bench.serving.traffic.prompts import Prompt

SERVER_GONE = ("connect", "disconnected")  # error kinds a server that died mid-level causes
EXIT_GRACE_S = 1.0  # how long a runaway of such errors waits for the server's exit code before it is called one
WATCH_S = 0.1  # how often the server's process is checked during a level


def arrival_offsets(level: LoadLevel, n: int, seed: int) -> list[float]:
    """Scheduled send times (s from the level's start) of an open-loop level; the first at 0."""
    assert level.rate is not None
    if level.arrival == "constant":
        gaps = np.full(n, 1.0 / level.rate)
    else:
        shape = level.burstiness if level.arrival == "gamma" else 1.0
        gaps = np.random.default_rng(seed).gamma(shape, 1.0 / (level.rate * shape), n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


@dataclass
class LevelRun:
    """A level as run: its requests (sent ones, in send order), start, and why it stopped early if it did."""

    started_ns: int
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: str | None = None
    planned: int = 0


class _Level:
    def __init__(self, http, target: Target, prompts: list[Prompt], level: LoadLevel, limits: RunawayLimits,
                 floor_e2e_ms: float | None, server_exit: Callable[[], int | None]) -> None:
        self.http, self.target, self.prompts, self.level = http, target, prompts, level
        self.limits, self.floor_e2e_ms, self.server_exit = limits, floor_e2e_ms, server_exit
        self.run = LevelRun(started_ns=time.perf_counter_ns(), planned=level.requests)
        self.stop = asyncio.Event()
        self.finished: list[Outcome] = []
        self.deadline = time.monotonic() + level.max_seconds

    def halt(self, reason: str) -> None:
        if self.run.stopped is None:
            self.run.stopped = reason
        self.stop.set()

    def _server_exited(self, code: int) -> None:
        self.halt(f"server exited with code {code} during the level")

    async def _exit_code_soon(self) -> int | None:
        """The server's exit code, waiting up to EXIT_GRACE_S for it: a killed server closes its socket (refused
        connections, dropped streams) a few milliseconds before its exit can be read, and a crash must be named
        as one, not as a runaway."""
        deadline = time.monotonic() + EXIT_GRACE_S
        while (code := self.server_exit()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return code

    async def _check_runaway(self) -> None:
        code = self.server_exit()
        if code is not None:  # failures caused by a dead server: say so, not "runaway"
            self._server_exited(code)
            return
        done = self.finished
        if len(done) < self.limits.min_requests:
            return
        failed = sum(o.error_kind is not None for o in done)
        if failed / len(done) >= self.limits.error_rate:
            if any(o.error_kind in SERVER_GONE for o in done) and (code := await self._exit_code_soon()) is not None:
                self._server_exited(code)
                return
            self.halt(f"runaway: {failed} of {len(done)} finished requests failed "
                      f"(limit {self.limits.error_rate:.0%})")
            return
        if self.floor_e2e_ms:
            recent = [(o.end_ns - o.sent_ns) / 1e6 for o in done[-self.limits.min_requests:]
                      if o.error_kind is None and o.end_ns and o.sent_ns]
            limit = self.floor_e2e_ms * self.limits.latency_factor
            if recent and statistics.median(recent) > limit:
                self.halt(f"runaway: median e2e of the last {len(recent)} requests "
                          f"{statistics.median(recent):.0f} ms > {self.limits.latency_factor:g} x the floor "
                          f"({self.floor_e2e_ms:.1f} ms)")

    async def one(self, index: int, scheduled_ns: int) -> None:
        prompt = self.prompts[index % len(self.prompts)]
        out = Outcome(index=index, scheduled_ns=scheduled_ns)
        self.run.outcomes.append(out)
        await send(self.http, self.target, prompt.text, prompt.output_tokens, out)
        self.finished.append(out)
        await self._check_runaway()

    async def _closed_user(self, indices) -> None:
        for index in indices:
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            await self.one(index, time.perf_counter_ns())

    async def _open(self, seed: int) -> None:
        offsets = arrival_offsets(self.level, self.level.requests, seed)
        gate = asyncio.Semaphore(self.level.concurrency) if self.level.concurrency else None
        tasks = []

        async def gated(index: int, scheduled_ns: int) -> None:
            if gate is None:
                return await self.one(index, scheduled_ns)
            async with gate:
                if not self.stop.is_set():
                    await self.one(index, scheduled_ns)

        for index, offset in enumerate(offsets):
            scheduled_ns = self.run.started_ns + int(offset * 1e9)
            delay = (scheduled_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            if self.stop.is_set() or time.monotonic() > self.deadline:
                break
            tasks.append(asyncio.create_task(gated(index, scheduled_ns)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _watch(self) -> None:
        while not self.stop.is_set():
            code = self.server_exit()
            if code is not None:
                self._server_exited(code)
                return
            try:
                await asyncio.wait_for(self.stop.wait(), WATCH_S)
            except asyncio.TimeoutError:
                pass

    async def execute(self, seed: int) -> LevelRun:
        load: asyncio.Future
        if self.level.mode == "closed":
            indices = iter(range(self.level.requests))
            load = asyncio.gather(*(self._closed_user(indices) for _ in range(self.level.concurrency or 1)))
        else:
            load = asyncio.ensure_future(self._open(seed))
        watcher = asyncio.create_task(self._watch())
        stopper: asyncio.Future = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([load, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not load.done():  # stopped early: cancel what is in flight
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        self.stop.set()
        await asyncio.gather(watcher, stopper, return_exceptions=True)
        if self.run.stopped:
            for out in self.run.outcomes:
                if out.error_kind == "cancelled":
                    out.error = f"cancelled: {self.run.stopped}"
        return self.run


async def run_level(http, target: Target, prompts: list[Prompt], level: LoadLevel, limits: RunawayLimits,
                    seed: int, floor_e2e_ms: float | None = None,
                    server_exit: Callable[[], int | None] = lambda: None) -> LevelRun:
    """Run one load level to its end (all requests answered, its time up, or stopped early)."""
    return await _Level(http, target, prompts, level, limits, floor_e2e_ms, server_exit).execute(seed)


def sweep_bounds(sweep: SweepSettings) -> tuple[LoadLevel, LoadLevel]:
    """The sweep's first two levels: synchronous (one user) and throughput (many users)."""
    common = {"requests": sweep.requests, "max_seconds": sweep.max_seconds}
    return (LoadLevel(mode="closed", concurrency=1, key="sync", **common),
            LoadLevel(mode="closed", concurrency=sweep.throughput_concurrency, key="throughput", **common))


def sweep_rates(sweep: SweepSettings, floor_rps: float, ceiling_rps: float) -> list[LoadLevel]:
    """Open-loop levels at `sweep.rates` rates evenly spaced strictly between the two measured request rates."""
    low, high = sorted((floor_rps, ceiling_rps))
    k = sweep.rates
    return [LoadLevel(mode="open", rate=low + (high - low) * i / (k + 1), arrival=sweep.arrival,
                      burstiness=sweep.burstiness, requests=sweep.requests, max_seconds=sweep.max_seconds,
                      key=f"sweep-{i}") for i in range(1, k + 1)]
