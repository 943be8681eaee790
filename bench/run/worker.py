"""One case, in its own process: load the backend, run its task, write the result file.

Started by the runner as `python -m bench.run.worker CASE.json RESULT.json [RUN_DIR]` (possibly
under another interpreter). Python-level failures are written as a result with status "failed", or
"skipped" when the case cannot apply here (a missing optional package, hardware it cannot run on);
a crash, a kill or a timeout leaves no result file and the runner records it from the exit status.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

from backends import backend_class
from bench.core.cache import write_json_atomic
from bench.core.deps import MissingDependency, NotSupportedHere
from bench.core.timing import Clock, make_clock
from bench.measure import bandwidth, kvcache
from bench.measure.evaltext import eval_text
from bench.measure.latency import measure, one_generation, prompt_batch
from bench.measure.memory import MemorySampler
from bench.measure.perplexity import perplexity
from bench.measure.quality import QualitySession
from bench.records.schema import CaseSpec, Summary
from bench.run.protocol import WorkerResult


def _median(result: WorkerResult, metric: str) -> float | None:
    value = result.metrics.get(metric)
    return value.median if isinstance(value, Summary) else None


def _sha(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def _perplexity_task(case: CaseSpec, backend, ids: list[int], clock: Clock, run_dir: Path | None) -> WorkerResult:
    settings = case.perplexity
    ids = ids[: settings.max_tokens] if settings.max_tokens else ids
    quality = QualitySession(case, run_dir, _sha(ids))  # writes the reference's log-probs, or compares with them
    result = perplexity(backend.token_logits, ids, settings.window, settings.stride, clock, on_window=quality.on_window)
    scores, why_not = quality.finish()
    info = result.info().model_copy(update={
        "eval_token_ids_sha256": _sha(ids), "n_eval_tokens": len(ids),
        "quality_reference": case.reference if scores else None, "quality_tokens": scores.tokens if scores else None})
    return WorkerResult(status="ok", metrics={**result.metrics(), **(scores.metrics() if scores else {})},
                        perplexity=info, not_applicable={"quality": why_not} if why_not else {})


def _latency_task(case: CaseSpec, backend, prompts: list[list[int]], clock: Clock) -> WorkerResult:
    assert case.workload is not None
    result = measure(backend, prompts, case.workload.new_tokens, case.repetitions, clock)
    return WorkerResult(status="ok", metrics=result.metrics, latency=result.info, samples=result.samples)


class Driver:
    """The runner's end of a driven latency case (bench/run/interleave.py): JSON lines over two pipes.

    The worker loads, warms up and says {"ready": ...}; then each {"measure": k} is answered with the stamps of
    k timed generations, until {"finish": true}."""

    def __init__(self, commands_fd: int, replies_fd: int) -> None:
        self.commands = os.fdopen(commands_fd, "r")
        self.replies = os.fdopen(replies_fd, "w")

    def reply(self, message: dict) -> None:
        self.replies.write(json.dumps(message) + "\n")
        self.replies.flush()

    def commands_until_finish(self) -> Iterator[dict]:
        for line in self.commands:
            command = json.loads(line)
            if command.get("finish"):
                return
            yield command


def _driven_latency(case: CaseSpec, backend, prompts: list[list[int]], clock: Clock, driver: Driver) -> WorkerResult:
    """Warm up, then measure what the runner asks for, round by round; the runner keeps the stamps."""
    assert case.workload is not None
    for _ in range(case.repetitions.warmup):
        backend.generate(prompts, case.workload.new_tokens, lambda: None)
    driver.reply({"ready": True})
    for command in driver.commands_until_finish():
        began = time.monotonic()
        stamps = [one_generation(backend, prompts, case.workload.new_tokens, clock) for _ in range(command["measure"])]
        driver.reply({"stamps": stamps, "seconds": time.monotonic() - began})
    return WorkerResult(status="ok")


def run_case(case: CaseSpec, run_dir: Path | None = None, driver: Driver | None = None,
             profile: bool = True) -> WorkerResult:
    """Measure one case in this process. `run_dir`: where the reference's log-probs and traces live; `driver`:
    the runner paces a latency case round by round (interleaved with other variants); `profile`: whether
    this process profiles a profiled case (the last of a case's processes does)."""
    if case.task == "serving":  # a server under load, no backend in this process (bench/serving/run.py)
        from bench.serving.run import run_serving_case

        return run_serving_case(case, run_dir)
    from bench.models import resolve_model

    started = time.monotonic()
    sampler = MemorySampler().start()
    cls = backend_class(case.backend)
    backend = cls(cls.Options(**case.options), threads=case.threads)
    clock = make_clock(backend.device)
    model_path = resolve_model(case.model)
    try:
        load_ns, _ = clock.time_ns(lambda: backend.load(model_path))
        ids = backend.tokenize(eval_text(case.perplexity.text))
        prompts = None
        if case.task == "perplexity":
            result = _perplexity_task(case, backend, ids, clock, run_dir)
        else:
            assert case.workload is not None
            prompts = prompt_batch(ids, case.workload.batch_size, case.workload.prompt_tokens)
            result = (_driven_latency(case, backend, prompts, clock, driver) if driver is not None
                      else _latency_task(case, backend, prompts, clock))
        description = backend.describe()
        memory = sampler.stop()
        if case.profile and profile and prompts is not None and run_dir is not None:  # after measuring
            from bench.measure.profiling import profile_case

            result.profile = profile_case(case, backend, prompts, run_dir / "traces" / case.id)
    finally:
        backend.close()
    result.metrics.update(load_s=load_ns / 1e9, model_size_bytes=description.model_size_bytes, **memory.metrics)
    converted = {"conversion_s": description.conversion_seconds,
                 "conversion_peak_rss_bytes": description.conversion_peak_rss_bytes}
    result.metrics.update({k: v for k, v in converted.items() if v is not None})
    result.not_applicable.update(memory.not_applicable)
    if case.task == "latency":  # the KV cache's bytes per token: computed from the config, and measured
        result.metrics.update(kvcache.metrics(model_path, description))
        # the device's peak bandwidth: MBU is weight bytes per step / TPOT over it
        peak: float | None
        if case.measure_memory_bandwidth and backend.device == "cpu":  # the model is closed: memory is free
            peak, source = bandwidth.measure_host_gbs()
        else:
            peak, source = bandwidth.peak_bandwidth(backend.device, case.peak_memory_bandwidth_gbs)
        description.details["peak_memory_bandwidth_gbs"] = peak
        description.details["peak_memory_bandwidth_source"] = source
        if driver is None:  # measured alone: TPOT is known here (driven: the runner has the samples)
            rates, unknown = bandwidth.mbu(description.model_size_bytes, _median(result, "tpot_ms"), peak, source)
            result.metrics.update(rates)
            result.not_applicable.update(unknown)
    result.backend = description
    result.model_path = model_path
    result.worker_seconds = time.monotonic() - started
    result.python = sys.executable
    return result


def failure(exc: BaseException) -> WorkerResult:
    """The result of a case that raised: skipped when it cannot apply here, else failed with the reason."""
    if isinstance(exc, (MissingDependency, NotSupportedHere)):
        return WorkerResult(status="skipped", reason=str(exc))
    out_of_memory = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
    kind = "out of memory" if out_of_memory else type(exc).__name__
    return WorkerResult(status="failed", reason=f"{kind}: {exc}".strip())


DEPRECATIONS_AS_ERRORS = "BENCH_DEPRECATIONS_AS_ERRORS"
# deprecations inside a library, of another library's API, that bench's own calls cannot avoid: stay warnings
THIRD_PARTY_DEPRECATIONS = [
    r"`torch\.distributed\.reduce_op` is deprecated",  # vLLM 0.32's own use of torch 2.13's old name
]


DRIVE_FDS = "BENCH_DRIVE_FDS"  # "COMMANDS_FD,REPLIES_FD": the runner paces this latency case (interleave.py)
NO_PROFILE = "BENCH_NO_PROFILE"  # set for all but the last process of a profiled case


def main(argv: list[str]) -> int:
    if os.environ.get(DEPRECATIONS_AS_ERRORS):  # a developer switch (the tests set it): fail on deprecated APIs
        warnings.filterwarnings("error", message=".*deprecated", category=FutureWarning)
        for message in THIRD_PARTY_DEPRECATIONS:
            warnings.filterwarnings("default", message=message, category=FutureWarning)
    case_path, result_path = Path(argv[0]), Path(argv[1])
    run_dir = Path(argv[2]) if len(argv) > 2 else None
    case = CaseSpec.model_validate_json(case_path.read_text())
    driver = Driver(*map(int, os.environ[DRIVE_FDS].split(","))) if os.environ.get(DRIVE_FDS) else None
    try:
        result = run_case(case, run_dir, driver, profile=not os.environ.get(NO_PROFILE))
    except Exception as exc:  # noqa: BLE001 - recorded, never lost: the runner goes on with the next case
        traceback.print_exc()
        result = failure(exc)
        if driver is not None:  # the runner may be waiting for a reply: tell it, rather than make it time out
            driver.reply({"failed": result.model_dump(mode="json")})
    write_json_atomic(result_path, result.model_dump(mode="json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
