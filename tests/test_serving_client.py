"""The serving client against bench's stub SSE server (a real HTTP server on 127.0.0.1, in its own process):
a known cadence is measured back, every fault is counted by kind, open-loop schedules and coordinated
omission, runaway levels stop early, a server killed mid-level fails that level's requests with reasons."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest

from bench.records.schema import SLO, LoadLevel, RunawayLimits
from bench.serving.launch.lifecycle import RunningServer, ServerFailed
from bench.serving.launch.servers import Stub, StubOptions
from bench.serving.results import aggregate
from bench.serving.traffic.client import Target, session
from bench.serving.traffic.load import arrival_offsets, run_level
from bench.serving.traffic.prompts import Prompt
from bench.serving.traffic.selfcheck import self_check

pytest.importorskip("aiohttp", reason="the serving client needs aiohttp: pip install 'bench[serving]'")
pytestmark = pytest.mark.timeout(120)
PROMPTS = [Prompt("hello", 1, 8)]
NO_LIMITS = RunawayLimits(min_requests=10_000)


def stub(tmp_path, **options) -> RunningServer:
    return RunningServer(Stub(StubOptions(**options)), "", tmp_path / f"stub-{len(list(tmp_path.iterdir()))}.log")


def level_of(base_url: str, level: LoadLevel, timeout_s: float = 10, limits=NO_LIMITS, server_exit=lambda: None,
             endpoint: str = "completions"):
    async def go():
        async with session(timeout_s) as http:
            return await run_level(http, Target(base_url, endpoint, timeout_s=timeout_s), PROMPTS, level, limits,
                                   seed=0, server_exit=server_exit)
    return asyncio.run(go())


def metrics_of(run, slo: SLO | None = None):
    slo = slo or SLO()
    requests = aggregate.samples(run.outcomes, PROMPTS, run.started_ns, lambda text: text.count(" the"))
    return requests, *aggregate.level_metrics(requests, slo, None)


def test_the_client_measures_the_stubs_known_cadence(tmp_path):
    result = asyncio.run(self_check(16, None, tmp_path))
    cadence = result["cadence"]
    # ITL: the stub sends each chunk at an absolute deadline; the client must see the same gaps
    assert abs(cadence["itl_ms"] - cadence["stub_itl_ms"]) <= min(1.0, 0.02 * cadence["stub_itl_ms"])
    # TTFT also holds the loopback round trip through both processes' HTTP stacks: ~1.1 ms on this 2-core machine
    # when it is busy (the self-check's 1 ms target is then missed, and the record says so); bounded here at 3 ms
    assert 0 <= cadence["ttft_ms"] - cadence["stub_ttft_ms"] <= 3.0, cadence
    assert result["client_max_rps"] > 50 and result["flood_errors"] == 0


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_per_request_numbers_follow_the_stub(tmp_path, endpoint):
    with stub(tmp_path, ttft_ms=40, itl_ms=10) as server:
        launch = server.start(30)
        run = level_of(launch.base_url, LoadLevel(mode="closed", concurrency=2, requests=6), endpoint=endpoint)
    requests, metrics, errors = metrics_of(run, SLO(ttft_ms=35))
    assert errors == {} and metrics["serve_ok_requests"] == 6
    assert all(len(r.chunks_ns) == 8 and r.output_tokens == 8 for r in requests)
    assert 40 <= metrics["serve_ttft_ms"].median < 48  # the stub's timers wake up to 1 ms late, on a busy machine
    assert 9 < metrics["serve_itl_ms"].median < 11
    assert 9 < metrics["serve_tpot_ms"].median < 11  # (e2e - ttft) / (8 - 1)
    assert metrics["serve_goodput_rps"] == 0 and metrics["serve_slo_fraction"] == 0  # every TTFT > 35 ms
    duration = metrics["serve_duration_s"]
    assert metrics["serve_output_tok_s"] == pytest.approx(48 / duration)
    assert metrics["serve_request_rps"] == pytest.approx(6 / duration)


FAULTS = [("http_500", "http_500"), ("not_sse", "not_sse"), ("malformed", "malformed"), ("disconnect", "disconnected"),
          ("hang", "timeout")]


@pytest.mark.parametrize("fault, kind", FAULTS, ids=[f[0] for f in FAULTS])
def test_every_fault_is_counted_by_kind_and_never_crashes_the_client(tmp_path, fault, kind):
    with stub(tmp_path, ttft_ms=1, itl_ms=1, fault=fault, fault_every=2) as server:
        launch = server.start(30)
        run = level_of(launch.base_url, LoadLevel(mode="closed", concurrency=2, requests=6), timeout_s=2)
    _, metrics, errors = metrics_of(run)
    assert errors == {kind: 3}, [o.error for o in run.outcomes]
    assert metrics["serve_ok_requests"] == 3 and metrics["serve_error_rate"] == 0.5


def test_an_unreachable_endpoint_is_a_connect_error():
    from bench.serving.launch.procs import free_port

    run = level_of(f"http://127.0.0.1:{free_port()}/v1", LoadLevel(mode="closed", concurrency=1, requests=3))
    assert [o.error_kind for o in run.outcomes] == ["connect"] * 3


def test_arrival_schedules_have_the_stated_rate_and_burstiness():
    poisson = np.diff(arrival_offsets(LoadLevel(mode="open", rate=50, requests=4000), 4000, seed=1))
    bursty = np.diff(arrival_offsets(LoadLevel(mode="open", rate=50, arrival="gamma", burstiness=0.25, requests=4000),
                                     4000, seed=1))
    steady = np.diff(arrival_offsets(LoadLevel(mode="open", rate=50, arrival="constant", requests=10), 10, seed=1))
    assert 1 / poisson.mean() == pytest.approx(50, rel=0.05) and poisson.std() / poisson.mean() == pytest.approx(1, 0.1)
    assert 1 / bursty.mean() == pytest.approx(50, rel=0.1) and bursty.std() / bursty.mean() == pytest.approx(2, 0.1)
    assert np.allclose(steady, 0.02)
    assert arrival_offsets(LoadLevel(mode="open", rate=5, requests=5), 5, 7) == \
        arrival_offsets(LoadLevel(mode="open", rate=5, requests=5), 5, 7)  # seeded


def test_open_loop_beyond_capacity_shows_coordinated_omission(tmp_path):
    # one slot, 100 ms per request: 10 req/s at most; 40 req/s offered under a ceiling of 2 in flight
    with stub(tmp_path, ttft_ms=20, itl_ms=10, slots=1) as server:
        launch = server.start(30)
        run = level_of(launch.base_url, LoadLevel(mode="open", rate=40, arrival="constant", concurrency=2, requests=10))
    _, metrics, errors = metrics_of(run)
    assert errors == {}
    lag, ttft, sched = (metrics[m] for m in ("serve_schedule_lag_ms", "serve_ttft_ms", "serve_ttft_sched_ms"))
    assert lag.max > 300  # the client fell far behind its schedule (held back by the ceiling)
    assert sched.p90 > ttft.p90 + 300  # from the schedule, users waited much longer than from the send
    assert metrics["serve_request_rps"] < 12


def test_a_runaway_level_stops_early(tmp_path):
    with stub(tmp_path, ttft_ms=1, itl_ms=1, fault="http_500") as server:
        launch = server.start(30)
        run = level_of(launch.base_url, LoadLevel(mode="closed", concurrency=1, requests=200),
                       limits=RunawayLimits(min_requests=5, error_rate=0.5))
    assert run.stopped and "runaway" in run.stopped and len(run.outcomes) == 5


def test_a_server_killed_mid_level_fails_that_levels_requests_and_can_be_restarted(tmp_path):
    with stub(tmp_path, ttft_ms=50, itl_ms=50) as server:
        launch = server.start(30)
        pid = server.pid
        killer = threading.Timer(0.5, lambda: os.kill(pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        run = level_of(launch.base_url, LoadLevel(mode="closed", concurrency=3, requests=30),
                       server_exit=server.exit_code)
        assert time.monotonic() - started < 5
        assert run.stopped == f"server exited with code {-signal.SIGKILL} during the level"
        _, metrics, errors = metrics_of(run)
        assert metrics["serve_ok_requests"] < 30 and sum(errors.values()) >= 3
        assert set(errors) <= {"disconnected", "cancelled", "connect"}
        assert all(o.error for o in run.outcomes if o.error_kind)  # each failure says why
        launch = server.restart(30)
        assert server.restarts == 1 and server.exit_code() is None
        again = level_of(launch.base_url, LoadLevel(mode="closed", concurrency=1, requests=2))
        assert [o.error_kind for o in again.outcomes] == [None, None]


def test_a_server_that_cannot_start_fails_with_its_log_tail(tmp_path):
    broken = RunningServer(Stub(StubOptions(extra_args=["--no-such-flag"])), "", tmp_path / "broken.log")
    with pytest.raises(ServerFailed, match=r"exited with code 2 before it was ready(.|\n)*no-such-flag"):
        broken.start(30)
