"""One case, in its own process: load the backend, run its task, write the result file.

Started by the runner as `python -m bench.run.worker TASK CASE.json RESULT.json [RUN_DIR]` (possibly
under another interpreter), TASK the import path "module:function" of what runs the case's task, which the
runner looked up in bench/exec/tasks.py (`run_backend_case` here for latency and perplexity; the serving
task's function is in bench/serving/, which this module does not import). Python-level failures are written
as a result with status "failed", or "skipped" when the case cannot apply here (a missing optional package,
hardware it cannot run on); a crash, a kill or a timeout leaves no result file and the runner records it
from the exit status.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from backends import backend_class
from bench.core.deps import MissingDependency, NotSupportedHere
from bench.core.timing import Clock, make_clock
from bench.exec.protocol import DRIVE_FDS, RESULT_UNWRITABLE, Driver, Failed, Measured, Ready, WorkerResult
from bench.exec.tasks import task_function
from bench.measure import bandwidth, energy, kvcache
from bench.measure.evaltext import eval_text
from bench.measure.latency import one_generation, prompt_batch
from bench.measure.memory import MemorySampler
from bench.records import safe_files
from bench.records.schema import CaseSpec


def _driven_latency(case: CaseSpec, backend, prompts: list[list[int]], clock: Clock, driver: Driver) -> WorkerResult:
    """Warm up, then measure what the runner asks for, round by round; the runner keeps the stamps."""
    assert case.workload is not None
    for _ in range(case.repetitions.warmup):
        backend.generate(prompts, case.workload.new_tokens, lambda: None)
    driver.send(Ready())
    for command in driver.measure_commands():
        began = time.monotonic()
        stamps = [one_generation(backend, prompts, case.workload.new_tokens, clock) for _ in range(command.repetitions)]
        driver.send(Measured(stamps=stamps, seconds=time.monotonic() - began))
    return WorkerResult(status="ok")


def run_backend_case(case: CaseSpec, run_dir: Path | None = None, driver: Driver | None = None) -> WorkerResult:
    """A latency or perplexity case: load the backend and measure. `run_dir`: where the reference's log-probs and
    traces live; `driver`: the runner paces a latency case round by round (interleaved with other variants) and
    says at the end whether this process profiles it (the case's last process does)."""
    from bench.models import resolve_model

    started = time.monotonic()
    lookup = None
    if case.task == "perplexity":  # imported only here: scipy and the quality code are no latency worker's start-up
        from bench.run.perplexity_task import ensure_reference, perplexity_task

        # before anything is measured: a reference's log-probabilities that left the cache are computed again, apart
        lookup = ensure_reference(case, run_dir)
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
            result = perplexity_task(case, backend, ids, clock, run_dir, model_path, lookup)
        else:
            assert case.workload is not None
            prompts = prompt_batch(ids, case.workload.batch_size, case.workload.prompt_tokens)
            if driver is None:
                raise RuntimeError("a latency case is driven by the runner (bench/run/interleave.py), "
                                   f"with {DRIVE_FDS} set")
            result = _driven_latency(case, backend, prompts, clock, driver)
        description = backend.describe()
        memory = sampler.stop()
        last_process = driver is not None and driver.profile  # the case's last process measures energy and profiles
        if prompts is not None and case.workload is not None and last_process:  # energy/token where a counter exists
            energy.measure_into(result, backend, prompts, case.workload.new_tokens)
        if case.profile and last_process and prompts is not None and run_dir is not None:  # after measuring
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
        # the device's peak bandwidth (measured on this host when the suite says so: the model is closed, memory
        # is free): the runner computes MBU (weight bytes per step / TPOT over it) from every process's samples
        if case.measure_memory_bandwidth and backend.device == "cpu":
            result.peak_bandwidth_gbs, result.peak_bandwidth_source = bandwidth.measure_host_gbs()
        else:
            result.peak_bandwidth_gbs, result.peak_bandwidth_source = bandwidth.peak_bandwidth(
                backend.device, case.peak_memory_bandwidth_gbs)
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


def main(argv: list[str]) -> int:
    if os.environ.get(DEPRECATIONS_AS_ERRORS):  # a developer switch (the tests set it): fail on deprecated APIs
        warnings.filterwarnings("error", message=".*deprecated", category=FutureWarning)
        for message in THIRD_PARTY_DEPRECATIONS:
            warnings.filterwarnings("default", message=message, category=FutureWarning)
    task, case_path, result_path = argv[0], Path(argv[1]), Path(argv[2])
    run_dir = Path(argv[3]) if len(argv) > 3 else None
    case = CaseSpec.model_validate_json(case_path.read_text())
    driver = Driver.from_environment()
    try:
        result = task_function(task)(case, run_dir, driver)
    except Exception as exc:  # noqa: BLE001 - recorded, never lost: the runner goes on with the next case
        traceback.print_exc()
        result = failure(exc)
        if driver is not None:  # the runner may be waiting for a reply: tell it, rather than make it time out
            driver.send(Failed(result=result))
    try:
        safe_files.write_json(result_path, result_path.parent, result.model_dump(mode="json"))
    except OSError as exc:  # the harness's own I/O (a full or read-only disk): the runner stops, no case fails
        print(f"bench worker: cannot write its result {result_path}: {exc.strerror or exc}", file=sys.stderr)
        return RESULT_UNWRITABLE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
