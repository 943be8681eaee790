"""The serving case, what the worker runs for `task: serving`: one server, every load level, one record.

Order: pin client and server apart (where there are >= 2 CPUs); the client's self-check against the
stub; build the prompts; start the server (a failure to start is a failed case with its log tail); a
few warm-up requests; the sweep's levels, then the suite's levels, each with the server's memory
sampled and the client's CPU time counted, a progress line when it ends. A server that exits during a
level fails that level's remaining requests, marks the level, and is restarted for the next one. The
server is always stopped, also on an exception or Ctrl-C (and the kernel kills it if the worker dies).
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.core.deps import require
from bench.exec.protocol import Driver, WorkerResult
from bench.exec.tasks import TASKS
from bench.measure.memory import MemorySampler
from bench.records import safe_files
from bench.records.schema import (
    CaseSpec,
    LoadLevel,
    RawSamples,
    RequestSample,
    ServingInfo,
    ServingLevel,
    ServingSettings,
)
from bench.serving.launch import procs
from bench.serving.launch.lifecycle import RunningServer, ServerFailed
from bench.serving.launch.servers import Launch, server_class
from bench.serving.results import aggregate
from bench.serving.traffic import load
from bench.serving.traffic.client import Outcome, Target, send, session
from bench.serving.traffic.prompts import Prompt, Tokenizer, make_prompts

SERVER_MEMORY_INTERVAL_S = 0.05
PROGRESS_FD = "BENCH_PROGRESS_FD"  # the runner's terminal, where one line per level is printed


def progress(line: str) -> None:
    """A progress line: in the case's log, and on the runner's terminal when it handed one over."""
    print(line, flush=True)
    fd = os.environ.get(PROGRESS_FD)
    if fd:
        try:
            os.write(int(fd), (line + "\n").encode())
        except (OSError, ValueError):
            pass


def describe_load(level: LoadLevel) -> str:
    if level.mode == "closed":
        return f"closed loop, {level.concurrency} user{'s' if level.concurrency != 1 else ''}"
    ceiling = f", at most {level.concurrency} in flight" if level.concurrency else ""
    shape = level.arrival if level.arrival != "gamma" else f"gamma (burstiness {level.burstiness:g})"
    return f"open loop, {level.rate:.3g} req/s {shape}{ceiling}"


class ServingCase:
    def __init__(self, case: CaseSpec, run_dir: Path | None) -> None:
        assert case.serving is not None
        self.case, self.settings = case, case.serving
        kind_class = server_class(case.backend)
        self.kind = kind_class(kind_class.Options(**case.options), threads=case.threads)
        logs = run_dir / "logs" if run_dir else Path(tempfile.mkdtemp(prefix="bench-serving-"))
        safe_files.makedirs(logs, logs.parent)  # refused when the run's logs/ is a link
        self.log_path = logs / f"{case.id}.server.log"
        self.levels: list[ServingLevel] = []
        self.raw: dict[str, list[RequestSample]] = {}
        self.floor_e2e_ms: float | None = None

    # ------------------------------------------------------------ one level

    async def _level(self, http, server: RunningServer, target: Target, prompts: list[Prompt],
                     level: LoadLevel, client_max_rps: float | None) -> ServingLevel:
        s = self.settings
        sampler = MemorySampler(SERVER_MEMORY_INTERVAL_S, pid=server.pid).start() if server.pid else None
        launch = server.launch
        counters = await asyncio.to_thread(self.kind.cache_counters, launch) if launch else None
        cpu, wall = time.process_time(), time.perf_counter()
        run = await load.run_level(http, target, prompts, level, s.runaway, s.seed, self.floor_e2e_ms,
                                   server.exit_code)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = await asyncio.to_thread(self.kind.cache_counters, launch) if launch and counters else None
        memory = sampler.stop() if sampler else None
        requests = aggregate.samples(run.outcomes, prompts, run.started_ns, self.tokenizer.count,
                                     chunk_is_token=self.kind.one_token_per_chunk)
        asked = {id(r): prompts[o.index % len(prompts)].output_tokens for r, o in zip(requests, run.outcomes)}

        def level_tokens(r: RequestSample) -> int:
            return asked[id(r)]

        offered = aggregate.offered_rate([r.scheduled_ns for r in requests]) if level.mode == "open" else None
        metrics, errors = aggregate.level_metrics(requests, s.slo, offered)
        metrics["serve_client_cpu"] = cpu / wall if wall > 0 else None
        metrics["serve_client_max_rps"] = client_max_rps
        metrics["serve_server_rss_bytes"] = memory.metrics["peak_rss_sampled_bytes"] if memory else None
        if counters and after and after["queries"] > counters["queries"]:
            metrics["serve_prefix_cache_hit_rate"] = (after["hits"] - counters["hits"]) / \
                (after["queries"] - counters["queries"])
        notes = []
        if level.mode == "open" and client_max_rps and level.rate and level.rate > client_max_rps:
            notes.append(f"the requested rate {level.rate:.3g} req/s exceeds what this client can drive "
                         f"(~{client_max_rps:.3g} req/s of client CPU, self-check)")
        short = sum(1 for r in aggregate.ok_requests(requests) if max(len(r.chunks_ns), r.output_tokens or 0,
                                                                      r.usage_output_tokens or 0) < level_tokens(r))
        if short:
            notes.append(f"{short} request(s) returned fewer tokens than they asked for (max_tokens)")
        disagreement = aggregate.retokenize_disagreements(requests)
        if disagreement:
            notes.append(disagreement)
        if len(run.outcomes) < run.planned:
            notes.append(f"sent {len(run.outcomes)} of {run.planned} planned requests")
        ok = metrics["serve_ok_requests"]
        status = "failed" if not ok else ("stopped" if run.stopped else "ok")
        self.raw[level.name] = requests
        return ServingLevel(key=level.name, label=describe_load(level), load=level, status=status,
                            reason=run.stopped or (None if ok else "no request succeeded"), metrics=metrics,
                            errors=errors, notes=notes)

    def _report(self, level: ServingLevel) -> None:
        v = level.value
        parts = [f"{level.metrics.get('serve_ok_requests')}/{level.metrics.get('serve_requests')} ok"]
        for name, label, unit in (("serve_request_rps", "", "req/s"), ("serve_output_tok_s", "", "output tok/s"),
                                  ("serve_ttft_ms", "TTFT p50 ", "ms"), ("serve_e2e_ms", "e2e p50 ", "ms")):
            if v(name) is not None:
                parts.append(f"{label}{v(name):.4g} {unit}")
        status = "" if level.status == "ok" else f" [{level.status}: {level.reason}]"
        progress(f"[serving] {self.case.variant} {level.key} ({level.label}): {', '.join(parts)}{status}")

    # ------------------------------------------------------------ all levels

    async def _levels(self, server: RunningServer, launch: Launch, prompts: list[Prompt],
                      client_max_rps: float | None) -> None:
        s = self.settings
        async with session(s.request_timeout_s) as http:
            def target(current: Launch) -> Target:
                return Target(current.base_url, s.request.endpoint, current.model_name,
                              self.kind.request_fields(s.request.output_tokens), current.headers,
                              s.request_timeout_s)

            for prompt in prompts[: s.warmup_requests]:
                await warm_up(http, target(launch), prompt)
            planned = list(load.sweep_bounds(s.sweep)) if s.sweep else []
            planned += s.levels
            stop_rates = False
            while planned:
                level = planned.pop(0)
                if stop_rates and level.key and level.key.startswith("sweep-"):
                    self.levels.append(ServingLevel(key=level.name, label=describe_load(level), load=level,
                                                    status="skipped", reason="a lower rate of the sweep ran away"))
                    continue
                if server.exit_code() is not None:
                    try:
                        launch = await asyncio.to_thread(server.restart, s.ready_timeout_s)
                    except ServerFailed as exc:
                        self.levels.append(ServingLevel(key=level.name, label=describe_load(level), load=level,
                                                        status="failed", reason=f"server restart failed: {exc}"))
                        continue
                measured = await self._level(http, server, target(launch), prompts, level, client_max_rps)
                self.levels.append(measured)
                self._report(measured)
                if self.floor_e2e_ms is None and measured.status == "ok":
                    self.floor_e2e_ms = measured.value("serve_e2e_ms")
                if measured.status == "stopped" and level.key and level.key.startswith("sweep-"):
                    stop_rates = True
                if s.sweep and level.key == "throughput":
                    planned[:0] = self._rates(s)

    def _rates(self, s: ServingSettings) -> list[LoadLevel]:
        assert s.sweep is not None
        by_key = {lv.key: lv.value("serve_request_rps") for lv in self.levels}
        floor, ceiling = by_key.get("sync"), by_key.get("throughput")
        if not floor or not ceiling:
            return []
        return load.sweep_rates(s.sweep, floor, ceiling)

    # ------------------------------------------------------------ the case

    def run(self) -> WorkerResult:
        s = self.settings
        require("aiohttp", "serving", "serving")
        server_cpus, client_cpus, placement = procs.placement(s.pin)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # before any thread starts: every later thread inherits it
        from bench.models import resolve_model

        model_dir = resolve_model(self.case.model)
        self.tokenizer = Tokenizer(model_dir)
        longest = max([lv.requests for lv in s.levels] + [s.sweep.requests if s.sweep else 0])
        if s.request.shared_prefix_tokens:  # N requests sharing one long prefix (a prefix cache's workload)
            from bench.serving.traffic import shared_prefix

            prompts = shared_prefix.make_prompts(s.request, max(longest, s.warmup_requests), s.seed, self.tokenizer)
        else:
            prompts = make_prompts(s.request, max(longest, s.warmup_requests), s.seed, self.tokenizer)
        client: dict = {}
        if s.self_check:
            from bench.serving.traffic.selfcheck import self_check

            client = asyncio.run(self_check(s.request.output_tokens, server_cpus, self.log_path.parent,
                                            f"{self.case.id}."))
            cadence = client.get("cadence", {})
            progress(f"[serving] client self-check: TTFT {cadence.get('ttft_ms', float('nan')):.2f} ms (stub "
                     f"{cadence.get('stub_ttft_ms')}), ITL {cadence.get('itl_ms', float('nan')):.2f} ms (stub "
                     f"{cadence.get('stub_itl_ms')}), passed: {cadence.get('passed')}; client max "
                     f"{client.get('client_max_rps') or float('nan'):.0f} req/s")
        info = ServingInfo(server=self.kind.name, placement={"how": placement, "client_cpus": sorted(client_cpus or []),
                                                             "server_cpus": sorted(server_cpus or []),
                                                             "threads": self.case.threads}, client=client)
        server = RunningServer(self.kind, model_dir, self.log_path, server_cpus)
        try:
            try:
                launch = server.start(s.ready_timeout_s)
            except ServerFailed as exc:
                print(str(exc), flush=True)  # the log tail reaches the record's output_tail
                return WorkerResult(status="failed", reason=str(exc).splitlines()[0], serving=self._info(info, server))
            progress(f"[serving] {self.case.variant}: {self.kind.name} {launch.version or ''} ready in "
                     f"{server.ready_seconds:.1f} s at {launch.base_url}")
            asyncio.run(self._levels(server, launch, prompts, client.get("client_max_rps")))
        finally:
            server.stop()
        info = self._info(info, server)
        ok = any(level.status in ("ok", "stopped") for level in self.levels)
        return WorkerResult(status="ok" if ok else "failed",
                            reason=None if ok else "no load level had a successful request", serving=info,
                            metrics={"serve_ready_s": server.ready_seconds}, model_path=model_dir,
                            samples=RawSamples(serving=self.raw), python=sys.executable)

    def _info(self, info: ServingInfo, server: RunningServer) -> ServingInfo:
        launch = server.launch
        return info.model_copy(update={
            "endpoint": launch.base_url if launch else None, "version": launch.version if launch else None,
            "command": launch.command or [] if launch else [], "log": str(self.log_path),
            "ready_seconds": server.ready_seconds, "restarts": server.restarts,
            "details": launch.details if launch else {}, "levels": self.levels})


async def warm_up(http, target: Target, prompt: Prompt) -> None:
    """One warm-up request (its outcome is not recorded)."""
    await send(http, target, prompt.text, prompt.output_tokens, Outcome(index=-1, scheduled_ns=0))


def run_serving_case(case: CaseSpec, run_dir: Path | None = None, driver: Driver | None = None) -> WorkerResult:
    """Measure one serving case in this process (the `serving` task of bench/exec/tasks.py; never driven)."""
    started = time.monotonic()
    result = ServingCase(case, run_dir).run()
    result.worker_seconds = time.monotonic() - started
    return result


# this module registers its task; the program's top imports it when it runs cases (bench/cli/run.py)
TASKS.add("serving", run_serving_case)
