"""Serving through the real CLI with the stub server: suite validation, one case per server holding its
levels, records and raw per-request samples, the serving tables, the gate per (case, level), and a worker
killed with SIGKILL leaves no server behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.exec.tasks import TASKS
from bench.records import load_run
from bench.serving import run as serving_task  # noqa: F401 - registers the serving task
from bench.suite import SuiteError, load_suite
from tests.conftest import ROOT, others_load, run_bench, skip_if_contended, write_suite

pytest.importorskip("aiohttp", reason="the serving client needs aiohttp: pip install 'bench[serving]'")
pytestmark = pytest.mark.timeout(300)

SUITE = """
name: stubs
models: [tiny-llama]
servers:
  - {{server: stub, label: stub, options: {{ttft_ms: {ttft}, itl_ms: 3, slots: 2}}}}
tasks: [serving]
serving:
  request: {{input_tokens: 16, output_tokens: 8}}
  slo: {{ttft_ms: 100}}
  self_check: false
  warmup_requests: 1
  sweep: {{rates: 1, requests: 12, throughput_concurrency: 4}}
  levels:
    - {{mode: open, rate: 30, arrival: gamma, burstiness: 0.5, concurrency: 3, requests: 12}}
"""


LOAD: dict[str, float] = {}  # CPUs other processes kept busy while the fixture's runs were measured


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("serving")
    write_suite(root / "fast.yaml", SUITE.format(ttft=10))
    with others_load() as load:
        for name in ("fast", "fast2"):
            proc = run_bench("run", "fast.yaml", "--run-id", name, cwd=root)
    LOAD["runs"] = load[0]
    assert "[serving] stub sync (closed loop, 1 user): 12/12 ok" in proc.stderr  # a progress line per level
    return root


def test_one_case_per_server_holds_every_level_with_raw_requests(runs):
    run = load_run(runs / "results" / "fast")
    (record,) = run.records
    assert record.ok and record.task == "serving" and record.case.backend == "stub"
    levels = {lv.key: lv for lv in record.serving.levels}
    assert list(levels) == ["sync", "throughput", "sweep-1", "r30-c3"]
    assert all(lv.status == "ok" and lv.errors == {} for lv in levels.values())
    sync, ceiling, between = levels["sync"], levels["throughput"], levels["sweep-1"]
    assert sync.value("serve_request_rps") < between.load.rate < ceiling.value("serve_request_rps")
    assert 10 <= sync.value("serve_ttft_ms")  # the stub waits 10 ms before the first token: never less
    skip_if_contended(LOAD["runs"], "the bound on the client's overhead over the stub's 10 ms TTFT")
    assert sync.value("serve_ttft_ms") < 20
    raw = run.samples(record.id).serving
    assert {k: len(v) for k, v in raw.items()} == {"sync": 12, "throughput": 12, "sweep-1": 12, "r30-c3": 12}
    request = raw["sync"][0]
    assert request.input_tokens == 16 and len(request.chunks_ns) == 8 and request.sent_ns <= request.chunks_ns[0]
    assert record.serving.placement["how"] and record.serving.log.endswith(".server.log")
    assert record.serving.command[1:3] == ["-m", "bench.serving.launch.stub"]


def test_the_report_has_a_table_per_load_level(runs):
    report = (runs / "reports" / "fast" / "report.md").read_text()
    assert "## tiny-llama: serving, closed loop, 1 user" in report
    assert "## tiny-llama: serving, open loop, 30 req/s gamma (burstiness 0.5), at most 3 in flight" in report
    assert "TTFT from schedule ms p50 / p90 / p99" in report and "## Servers" in report


def slowed_copy(root, source: str, name: str, level_key: str, delay_ms: float) -> None:
    """Copy a run; delay every chunk and end of one level's requests by `delay_ms` and re-derive its metrics."""
    from bench.records.schema import RawSamples
    from bench.serving.results.aggregate import level_metrics
    from tests.conftest import record_lines

    shutil.copytree(root / "results" / source, root / "results" / name)
    run = root / "results" / name
    (record,) = record_lines(run)
    path = run / "samples" / f"{record.id}.json"
    raw = RawSamples.model_validate_json(path.read_text())
    shift = int(delay_ms * 1e6)
    for request in raw.serving[level_key]:
        request.chunks_ns = [t + shift for t in request.chunks_ns]
        request.end_ns += shift
    level = next(lv for lv in record.serving.levels if lv.key == level_key)
    metrics, _ = level_metrics(raw.serving[level_key], record.case.serving.slo, None)
    level.metrics.update(metrics)
    path.write_text(raw.model_dump_json())
    (run / "cases.jsonl").write_text(record.model_dump_json() + "\n")


def test_the_gate_compares_serving_levels(runs):
    """A/A: never a regression; the open-loop levels' 12 requests queue at random, so their TTFT may be
    inconclusive (exit 4), but the closed loop with one user sees the stub's fixed 10 ms TTFT: unchanged."""
    proc = run_bench("compare", "fast", "fast2", "--threshold", "0.5", "--json", "aa.json", cwd=runs, check_exit=None)
    assert proc.returncode in (0, 4), proc.stdout + proc.stderr
    same = json.loads((runs / "aa.json").read_text())
    cases = {c["case"].split("@")[-1] for c in same["comparisons"]}
    assert {"sync", "throughput", "sweep-1", "r30-c3"} <= cases
    assert not [c for c in same["comparisons"] if c["status"] == "regression"]
    ttft = {c["case"].split("@")[-1]: c for c in same["comparisons"] if c["metric"] == "serve_ttft_ms"}
    assert all(c["method"] == "bootstrap" for c in ttft.values())  # requests of one client: no process stage
    slowed_copy(runs, "fast2", "slow", "sync", delay_ms=20)
    run_bench("compare", "fast", "slow", "--json", "ab.json", cwd=runs, check_exit=1)
    slower = json.loads((runs / "ab.json").read_text())
    regressions = {(c["case"].split("@")[-1], c["metric"]) for c in slower["comparisons"]
                   if c["status"] == "regression"}
    assert ("sync", "serve_ttft_ms") in regressions and ("sync", "serve_e2e_ms") in regressions
    # the A/A verdict on two fresh runs: only where no other process could shift one of them
    skip_if_contended(LOAD["runs"], "an 'unchanged' verdict between two fresh runs")
    assert ttft["sync"]["status"] == "unchanged"


def test_a_serving_suite_is_validated(tmp_path):
    base = "name: x\nmodels: [tiny-llama]\n"
    cases = [("servers:\n  - {server: nope}\ntasks: [serving]\nserving: {levels: [{concurrency: 1}]}\n",
              "servers[0].server: unknown server 'nope'; registered: endpoint, llama-cpp-server, stub"),
             ("servers:\n  - {server: stub}\ntasks: [serving]\nserving: {levels: [{mode: open}]}\n",
              "an open-loop level needs rate"),
             ("servers:\n  - {server: stub, options: {ttft: 3}}\ntasks: [serving]\nserving: {sweep: {}}\n",
              "servers[0].options.ttft"),
             ("servers:\n  - {server: stub}\ntasks: [serving]\n", "the serving task needs servers: and a serving:")]
    for body, message in cases:
        path = write_suite(tmp_path / "s.yaml", base + body)
        with pytest.raises(SuiteError) as err:
            load_suite(path)
        assert str(err.value).startswith(f"{path}:") and message in str(err.value), str(err.value)


def test_shipped_serving_suite_and_unchanged_case_ids():
    _, cases = load_suite(ROOT / "suites" / "serving.yaml")
    assert [c.variant for c in cases] == ["transformers-serve", "llama-cpp-server", "vllm-server"]
    assert cases[2].interpreter is None and cases[2].options["interpreter"] == "env:vllm-cpu"  # the client: bench's
    _, smoke = load_suite(ROOT / "suites" / "smoke.yaml")
    assert all(c.serving is None for c in smoke)


def test_a_killed_worker_leaves_no_server_behind(tmp_path, tiny_llama):
    write_suite(tmp_path / "long.yaml", SUITE.format(ttft=10).replace("requests: 12}\n", "requests: 5000, "
                                                                      "max_seconds: 120}\n"))
    _, (case,) = load_suite(tmp_path / "long.yaml")
    (tmp_path / "case.json").write_text(case.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "bench.run.worker", TASKS.path("serving"), "case.json",
                               "result.json", str(tmp_path)],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    log = tmp_path / "logs" / f"{case.id}.server.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and "stub SSE server" in log.read_text()):
        time.sleep(0.2)
    children = psutil.Process(worker.pid).children(recursive=True)
    assert any("bench.serving.launch.stub" in " ".join(c.cmdline()) for c in children)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
