"""The client measured against the stub: does it report a known cadence, and how fast can it send?

1. Cadence: the stub (its own process, on the server's CPUs) streams `CADENCE_TOKENS` chunks, the first
   after `TTFT_MS`, then one every `ITL_MS`; one user sends `CADENCE_REQUESTS` requests. The client's
   median TTFT and median ITL must be within 1 ms and 2 % of the stub's (`passed`).
2. Client capacity: the stub answers at once (TTFT 0, ITL 0) with the case's output length; many users
   send for up to `FLOOD_S`. The client's maximum request rate = requests / client CPU seconds: the rate at
   which the client alone keeps one core busy (the observed rate against the stub is recorded too). A
   level that asks for more than that is flagged.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.records.schema import LoadLevel, RunawayLimits
from bench.serving.launch.lifecycle import RunningServer
from bench.serving.launch.servers import Stub, StubOptions
from bench.serving.traffic.client import Target, session
from bench.serving.traffic.load import run_level
from bench.serving.traffic.prompts import Prompt

TTFT_MS, ITL_MS, CADENCE_TOKENS, CADENCE_REQUESTS = 50.0, 20.0, 12, 6
FLOOD_USERS, FLOOD_REQUESTS, FLOOD_S = 16, 400, 2.0
TOLERANCE_MS, TOLERANCE_REL = 1.0, 0.02
NO_LIMITS = RunawayLimits(min_requests=1_000_000)


def _within(measured: float, expected: float) -> bool:
    return abs(measured - expected) <= TOLERANCE_MS and abs(measured - expected) <= TOLERANCE_REL * expected


async def _cadence(base_url: str) -> dict:
    level = LoadLevel(mode="closed", concurrency=1, requests=CADENCE_REQUESTS, max_seconds=30)
    async with session(10) as http:
        run = await run_level(http, Target(base_url, timeout_s=10), [Prompt("x", 1, CADENCE_TOKENS)], level,
                              NO_LIMITS, seed=0)
    ok = [o for o in run.outcomes if o.error_kind is None and o.sent_ns and o.chunks_ns]
    if not ok:
        return {"passed": False, "error": f"no request succeeded: {[o.error for o in run.outcomes][:3]}"}
    ttft = statistics.median((o.chunks_ns[0] - o.sent_ns) / 1e6 for o in ok if o.sent_ns)
    itl = statistics.median(gap / 1e6 for o in ok for gap in (b - a for a, b in zip(o.chunks_ns, o.chunks_ns[1:])))
    return {"stub_ttft_ms": TTFT_MS, "stub_itl_ms": ITL_MS, "ttft_ms": ttft, "itl_ms": itl,
            "ttft_error_ms": ttft - TTFT_MS, "itl_error_ms": itl - ITL_MS,
            "passed": _within(ttft, TTFT_MS) and _within(itl, ITL_MS),
            "tolerance": f"within {TOLERANCE_MS:g} ms and {TOLERANCE_REL:.0%} of the stub's cadence"}


async def _flood(base_url: str, output_tokens: int) -> dict:
    level = LoadLevel(mode="closed", concurrency=FLOOD_USERS, requests=FLOOD_REQUESTS, max_seconds=FLOOD_S)
    async with session(10) as http:
        cpu, wall = time.process_time(), time.perf_counter()
        run = await run_level(http, Target(base_url, timeout_s=10), [Prompt("x", 1, output_tokens)], level,
                              NO_LIMITS, seed=0)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = sum(o.error_kind is None for o in run.outcomes)
    return {"client_max_rps": done / cpu if cpu > 0 else None, "observed_rps": done / wall,
            "client_cpu_fraction": cpu / wall, "flood_requests": done, "flood_output_tokens": output_tokens,
            "flood_errors": len(run.outcomes) - done}


async def self_check(output_tokens: int, cpus: set[int] | None, log_dir: Path | None = None, prefix: str = "") -> dict:
    """Both checks against fresh stubs on `cpus`; a dict for the case's record (ServingInfo.client)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-selfcheck-"))
    started = time.monotonic()
    result: dict = {"library": _library()}
    for name, options in (("cadence", StubOptions(ttft_ms=TTFT_MS, itl_ms=ITL_MS, precise=True)),
                          ("capacity", StubOptions(ttft_ms=0, itl_ms=0))):
        with RunningServer(Stub(options), "", log_dir / f"{prefix}selfcheck-{name}.log", cpus) as stub:
            launch = stub.start(30)
            if name == "cadence":
                result["cadence"] = await _cadence(launch.base_url)
            else:
                result.update(await _flood(launch.base_url, output_tokens))
    result["seconds"] = time.monotonic() - started
    return result


def _library() -> str:
    import aiohttp

    return f"aiohttp {aiohttp.__version__}"
