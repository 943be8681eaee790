"""The performance dashboard (`python -m bench site`, bench/site) over recorded runs: built from >= 5 runs in
< 10 s, every page loads in headless Chromium with no console error and no network request, and the overview,
a trend page with its change point, the compare view's environment diff, the quantization and the serving
views render what the runs hold. Change points: a known 10 % step is found at its run, an A/A history has none.

The runs are the checked-in format-1 fixture (tests/data/runs/v1-fixture, a real known-answer run) written
again as six format-2 runs a day apart with the project's own writers (RunDir), one variant's decode slowed by
10 % from the fourth run on (raw stamps scaled, samples and summaries re-derived), the last run on a new torch
and driver; plus two runs of a serving suite whose records are built from the schema with known numbers."""
from __future__ import annotations

import time

import pytest

from bench.measure.latency import derive
from bench.records import load_run
from bench.records.rundir import RunDir
from bench.records.schema import (
    SLO,
    CaseRecord,
    CaseSpec,
    LoadLevel,
    Machine,
    ServingInfo,
    ServingLevel,
    ServingSettings,
    Summary,
)
from tests.conftest import ROOT, run_bench

pytest.importorskip("plotly", reason="the dashboard copies plotly's bundled plotly.min.js: pip install 'bench[site]'")

FIXTURE = ROOT / "tests" / "data" / "runs" / "v1-fixture"
DAY = 86400.0
T0 = 1_790_000_000.0
STEP_FROM = 3  # runs n3.. have the 10 % slower decode (0-based index of the first slow run)
SLOWED = "slow.synthetic.b1-p8-n6.95c75550"
JITTER = (1.0, 1.004, 0.997, 1.002, 0.998, 1.003)  # run-to-run noise, well below the gate's 5 % minimum effect


def _machine(driver: str, torch: str) -> Machine:
    return Machine(machine_id="5ca1ab1e00c0ffee", hostname="ci-runner", cpu_model="Test CPU", cpu_count=2,
                   memory_bytes=8 * 2**30, gpus=[{"name": "Test GPU", "memory_total_bytes": 16 * 2**30}],
                   gpu_driver=driver, libraries={"torch": torch})


def write_latency_runs(results) -> list[str]:
    """Six runs of the v1 fixture's suite a day apart; SLOWED decodes 10 % slower from run STEP_FROM on."""
    base = load_run(FIXTURE)
    ids = []
    for i, jitter in enumerate(JITTER):
        run_id = f"n{i + 1}"
        newest = i == len(JITTER) - 1
        env = base.meta.environment.model_copy(update={
            "git_sha": f"{i + 1:02d}" * 20, "git_branch": "main",
            "libraries": {**base.meta.environment.libraries, "torch": "2.14.0" if newest else "2.13.0"}})
        meta = base.meta.model_copy(update={"run_id": run_id, "created_at": T0 + i * DAY, "environment": env,
                                            "format_version": 2})
        run = RunDir(results, run_id)
        run.create(meta)
        for record in base.records:
            record = record.model_copy(deep=True, update={"machine": _machine("590.1" if newest else "580.2",
                                                                             env.libraries["torch"])})
            samples = base.samples(record.id)
            if samples is not None and record.workload is not None:
                factor = jitter * (1.10 if record.id == SLOWED and i >= STEP_FROM else 1.0)
                stamps = [[int(s * factor) for s in rep] for rep in samples.stamps_ns]
                samples, metrics = derive(stamps, record.workload.batch_size, record.workload.prompt_tokens)
                record.metrics.update(metrics)
                run.write_samples(record.id, samples)
            if record.ok and record.task == "perplexity" and record.variant == "slow":  # a lossy variant
                record.metrics.update(kld_mean=0.031 if newest else 0.042, delta_ppl=0.28 if newest else 0.35)
            run.append(record)
        ids.append(run_id)
    return ids


# per server: (level key, concurrency, achieved req/s, goodput req/s, TTFT p50, TTFT p99) -- known answers
SERVERS = {
    "llama-server": [("c1", 1, 5.0, 5.0, 20.0, 30.0), ("c2", 2, 9.0, 9.0, 25.0, 40.0),
                     ("c4", 4, 14.0, 12.0, 40.0, 70.0), ("c8", 8, 16.0, 6.0, 90.0, 160.0)],
    "vllm": [("c1", 1, 6.0, 6.0, 15.0, 22.0), ("c2", 2, 11.5, 11.5, 18.0, 28.0),
             ("c4", 4, 21.0, 20.5, 24.0, 45.0), ("c8", 8, 33.0, 27.0, 35.0, 61.0)],
}
SERVING_SLO = SLO(ttft_ms=50.0, tpot_ms=20.0)


def _summary(p50: float, p99: float) -> Summary:
    return Summary(n=16, median=p50, p99=p99, p90=p50 + 0.8 * (p99 - p50), min=p50 / 2, max=p99)


def write_serving_runs(results) -> None:
    for i in range(2):
        run_id = f"serve{i + 1}"
        settings = ServingSettings(levels=[LoadLevel(concurrency=c) for _, c, *_ in SERVERS["vllm"]], slo=SERVING_SLO)
        run = RunDir(results, run_id)
        cases = []
        for server, levels in SERVERS.items():
            spec = CaseSpec(id=f"{server}.tiny.serving", suite="serving", model="tiny-llama", backend=server,
                            variant=server, task="serving", serving=settings)
            info = ServingInfo(server=server, levels=[
                ServingLevel(key=key, label=f"closed loop, {c} users", load=LoadLevel(concurrency=c), metrics={
                    "serve_request_rps": rps, "serve_goodput_rps": good, "serve_slo_fraction": good / rps,
                    "serve_error_rate": 0.0, "serve_ttft_ms": _summary(p50, p99),
                    "serve_tpot_ms": _summary(p50 / 4, p99 / 4), "serve_e2e_ms": _summary(p50 * 8, p99 * 8)})
                for key, c, rps, good, p50, p99 in levels])
            cases.append(CaseRecord(case=spec, status="ok", started_at=T0 + i * DAY, wall_seconds=30.0, serving=info,
                                    machine=_machine("580.2", "2.13.0")))
        from bench.records.schema import RunMeta

        run.create(RunMeta(run_id=run_id, suite_name="serving", created_at=T0 + i * DAY + 3600,
                           case_ids=[c.id for c in cases]))
        for c in cases:
            run.append(c)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Eight runs (six latency/quality, two serving), one HTML report, and the site built by the real CLI."""
    root = tmp_path_factory.mktemp("site")
    results = root / "results"
    write_latency_runs(results)
    write_serving_runs(results)
    (root / "reports" / "n6").mkdir(parents=True)
    from bench.report.html import MissingReportExtra, write_html

    try:
        write_html([load_run(results / "n6")], root / "reports")
    except MissingReportExtra:  # the link is what is tested here: a stand-in report without matplotlib
        (root / "reports" / "n6" / "report.html").write_text("<!DOCTYPE html><title>n6</title><p>report of n6</p>")
    began = time.monotonic()
    proc = run_bench("site", "--results", "results", "--reports", "reports", "-o", "site", cwd=root)
    return root, time.monotonic() - began, proc.stdout
