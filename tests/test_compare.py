"""The regression gate through the real CLI on known-answer runs: exit codes, named regressions, outputs,
webhook (a real HTTP server on 127.0.0.1), history baselines and exports read by pytest-benchmark."""
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import typing
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from bench.measure.latency import derive
from tests.conftest import KNOWN_ANSWER, ROOT, record_lines, recorded_load, run_bench, skip_if_contended, write_suite

SUITE = f"""
name: gate
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: fast, options: {{token_delay_s: 0.02, prefill_delay_s: 0.01}}}}
  - {{backend: "{KNOWN_ANSWER}", label: slow, options: {{token_delay_s: 0.03, prefill_delay_s: 0.02}}}}
reference: fast
workloads: [{{batch_size: [1, 2], prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency, perplexity]
repetitions: {{warmup: 1, min: 20, max: 20}}
perplexity: {{text: eval.txt, window: 16, stride: 8}}
regression: {{threshold: 0.05, metrics: {{load_s: 0.5}}}}
"""

FAILING = f"""
name: gate
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: fast, options: {{token_delay_s: 0.002}}}}
  - {{backend: "{KNOWN_ANSWER}", label: broken, options: {{fail: raise}}}}
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 8}}]
tasks: [latency]
repetitions: {{warmup: 1, min: 12, max: 12}}
perplexity: {{text: eval.txt}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two A/A runs of one known-answer suite (real CLI), and a run with a failed case."""
    root = tmp_path_factory.mktemp("gate")
    (root / "eval.txt").write_text("some evaluation text for the gate " * 20)
    write_suite(root / "suite.yaml", SUITE)
    write_suite(root / "failing.yaml", FAILING)
    run_bench("run", "suite.yaml", "--run-id", "a", cwd=root)
    run_bench("run", "suite.yaml", "--run-id", "b", cwd=root)
    run_bench("run", "failing.yaml", "--run-id", "failed", cwd=root, check_exit=3)
    return root


def slowed_copy(root, source: str, name: str, variant: str, batch: int, factor: float) -> str:
    """Copy a run; scale one latency case's raw stamps by `factor` and re-derive its samples and summaries."""
    shutil.copytree(root / "results" / source, root / "results" / name)
    run = root / "results" / name
    records = record_lines(run)
    for r in records:
        if r.variant == variant and r.task == "latency" and r.workload.batch_size == batch:
            path = run / "samples" / f"{r.id}.json"
            stamps = [[int(s * factor) for s in rep] for rep in json.loads(path.read_text())["stamps_ns"]]
            samples, metrics = derive(stamps, batch, r.workload.prompt_tokens)
            path.write_text(samples.model_dump_json())
            r.metrics.update(metrics)
            case_id = r.id
    (run / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    return case_id


def test_a_a_runs_never_get_a_regression_verdict(runs):
    """Two runs of the same code: the gate says 'no regression', or 'inconclusive' when the machine's drift
    between them is too large to tell (exit 4, never 1); how often each happens is measured by
    benchmarks/noisy_machine.py (real A/A runs under a competing load) and benchmarks/gate_minimum_data.py
    (simulated)."""
    proc = run_bench("compare", "a", "b", "--json", "aa.json", cwd=runs, check_exit=None)
    result = json.loads((runs / "aa.json").read_text())
    assert result["exit_code"] == proc.returncode, proc.stdout
    methods = {c["metric"]: c["method"] for c in result["comparisons"]}
    assert methods["tpot_ms"] == "two-stage bootstrap" and methods["decode_tok_s"] == "two-stage bootstrap"
    assert methods["perplexity"] == "threshold only" and methods["load_s"] == "not gated"
    assert result["summary"]["perplexity"]["geomean_ratio"] == pytest.approx(1.0)  # same text, same logits
    # a verdict on two fresh runs: a competing load during one of them shifts it alone, as a real change would
    skip_if_contended(max(recorded_load(record_lines(runs / "results" / run)) for run in "ab"),
                      "the A/A verdict between two fresh runs")
    assert proc.returncode in (0, 4), proc.stdout
    assert not [c for c in result["comparisons"] if c["status"] == "regression"], proc.stdout


def test_without_history_the_two_runs_spread_between_processes_widens_the_interval(runs):
    """Known answer: the sd of log per-process TPOT medians around their case's mean, pooled over every
    case of both runs, computed here from the raw samples on disk."""
    squares, dof = 0.0, 0
    for run in ("a", "b"):
        for path in sorted((runs / "results" / run / "samples").glob("*.json")):
            raw = json.loads(path.read_text())
            tpot, process = np.asarray(raw["tpot_ms"]), np.asarray(raw["process"])
            logs = np.log([np.median(tpot[process == k]) for k in np.unique(process)])
            squares, dof = squares + ((logs - logs.mean()) ** 2).sum(), dof + len(logs) - 1
    run_bench("compare", "a", "b", "--json", "spread.json", cwd=runs, check_exit=None)
    tpot = [c for c in json.loads((runs / "spread.json").read_text())["comparisons"] if c["metric"] == "tpot_ms"]
    assert dof >= 4 and tpot
    for c in tpot:
        assert c["between_run_sigma"] == pytest.approx(math.sqrt(squares / dof), rel=1e-9)
        assert "spread between processes" in c["note"] and f"{dof} degrees of freedom" in c["note"]


def test_a_case_slowed_by_10_percent_is_named_with_its_metric(runs):
    case_id = slowed_copy(runs, "a", "a-slow", "slow", 2, 1.10)
    proc = run_bench("compare", "a", "a-slow", "--markdown", "alert.md", "--json", "slow.json", cwd=runs, check_exit=1)
    result = json.loads((runs / "slow.json").read_text())
    flagged = {(c["case"], c["metric"]) for c in result["comparisons"] if c["status"] == "regression"}
    assert {(case_id, "tpot_ms"), (case_id, "decode_tok_s")} <= flagged
    assert {case for case, _ in flagged} == {case_id}  # nothing else is blamed
    tpot = next(c for c in result["comparisons"] if c["case"] == case_id and c["metric"] == "tpot_ms")
    assert tpot["ratio"] == pytest.approx(1.10, rel=1e-3) and tpot["ci_low"] <= 1.10 <= tpot["ci_high"]
    alert = (runs / "alert.md").read_text()
    assert case_id in alert and "`tpot_ms` (ms)" in alert and "[!CAUTION]" in alert and alert in proc.stdout + "\n"


def test_suite_thresholds_are_applied_per_case(runs):
    """A 40 % slowdown of 'slow' passes under its own 70 % threshold while the default (30 %) would flag it."""
    slowed_copy(runs, "a", "a-slow-forgiven", "slow", 1, 1.40)
    meta = runs / "results" / "a-slow-forgiven" / "run.json"  # the suite's regression section, as recorded
    data = json.loads(meta.read_text())
    data["regression"]["threshold"] = 0.3
    data["regression"]["cases"] = {"slow": 0.7}
    meta.write_text(json.dumps(data))
    run_bench("compare", "a", "a-slow-forgiven", "--json", "forgiven.json", cwd=runs, check_exit=0)
    tpot = {c["case"]: c for c in json.loads((runs / "forgiven.json").read_text())["comparisons"]
            if c["metric"] == "tpot_ms" and c["variant"] == "slow"}
    slowed = next(c for c in tpot.values() if c["ratio"] > 1.3)
    assert slowed["threshold"] == 0.7 and slowed["status"] == "unchanged"
    del data["regression"]["cases"]  # without its own threshold the same slowdown is a regression
    meta.write_text(json.dumps(data))
    run_bench("compare", "a", "a-slow-forgiven", cwd=runs, check_exit=1)


def test_a_failed_case_or_no_comparable_data_exits_3(runs, tmp_path):
    proc = run_bench("compare", "failed", "failed", cwd=runs, check_exit=3)
    assert "failed case" in proc.stdout and "injected failure" in proc.stdout
    proc = run_bench("compare", "a", str(runs / "results" / "failed"), cwd=runs, check_exit=3)
    assert "only in" in proc.stdout


def test_one_run_compares_each_variant_with_its_reference_from_paired_rounds(runs):
    """Known answer: 'slow' injects 30 ms per token and 20 ms of prefill against 'fast''s 20 and 10."""
    proc = run_bench("compare", "a", "--json", "within.json", cwd=runs, check_exit=1)
    result = json.loads((runs / "within.json").read_text())
    flagged = {(c["variant"], c["metric"]): c for c in result["comparisons"]}
    assert {v for v, _ in flagged} == {"slow"}  # the reference is not compared with itself
    tpot, ttft = flagged[("slow", "tpot_ms")], flagged[("slow", "ttft_ms")]
    assert tpot["method"] == "paired rounds" and tpot["status"] == "regression"
    assert "paired rounds" in proc.stdout and result["flagged"]
    # 1 % on a quiet machine; a preempted busy-wait stretches both variants' steps by the same absolute time,
    # which pulls the ratio toward 1 on a loaded one (2.5 % seen with two other test runs on these 2 cores)
    skip_if_contended(recorded_load(record_lines(runs / "results" / "a")), "the paired ratio's 3 % known answer")
    assert tpot["ratio"] == pytest.approx(1.5, rel=0.03) and tpot["ci_low"] * 0.98 <= 1.5 <= tpot["ci_high"] * 1.02
    assert ttft["ratio"] == pytest.approx(50 / 30, rel=0.02)  # (20 + 30) / (10 + 20) ms to the first token


@pytest.mark.parametrize("args", [["a", "no-such-run"], ["last:main", "a"], ["a", "b", "--threshold", "x"],
                                  ["a", "b", "c"]])
def test_bad_input_exits_2(runs, args):
    proc = run_bench("compare", *args, cwd=runs, check_exit=2)
    assert "error" in proc.stderr


class _Hook(BaseHTTPRequestHandler):
    received: typing.ClassVar[list] = []

    def do_POST(self):  # http.server's name
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_webhook_posts_a_slack_payload_to_a_real_server(runs):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        case_id = slowed_copy(runs, "a", "a-slow-hook", "fast", 1, 1.10)
        env_url = f"http://127.0.0.1:{server.server_port}/hook"
        proc = subprocess.run([sys.executable, "-m", "bench", "compare", "a", "a-slow-hook"], cwd=runs,
                              capture_output=True, text=True, env={**os.environ, "BENCH_WEBHOOK_URL": env_url,
                                                                  "PYTHONPATH": str(ROOT)}, check=False)
    finally:
        server.shutdown()
    assert proc.returncode == 1, proc.stderr
    assert "webhook: POST -> HTTP 200" in proc.stderr
    (payload,) = _Hook.received
    assert set(payload) == {"text"} and case_id in payload["text"] and "regression" in payload["text"]


def test_history_records_runs_and_last_branch_is_a_baseline(runs):
    """Which run `last:BRANCH` names, told by known answers the machine cannot flip: `main` records run a,
    `feature` a copy of it with one case twice as slow; compared at a 30 % threshold, a copy of a is no regression
    against last:main (ratio exactly 1) and the slow copy is one (ratio 2). Two fresh runs would not do: the
    machine's drift between them can put an interval across the threshold (exit 4)."""
    slowed_copy(runs, "a", "a-same", "slow", 2, 1.0)
    slowed_copy(runs, "a", "a-twice-slow", "slow", 2, 2.0)
    db = runs / "hist.sqlite"
    out = run_bench("history", "record", "a", "--db", str(db), "--branch", "main", cwd=runs).stdout
    assert "recorded a (branch main" in out
    run_bench("history", "record", "a-twice-slow", "--db", str(db), "--branch", "feature", cwd=runs)
    listing = run_bench("history", "list", "--db", str(db), cwd=runs).stdout
    assert "main" in listing and "feature" in listing
    run_bench("compare", "last:main", "a-same", "--threshold", "0.3", "--history-db", str(db), cwd=runs, check_exit=0)
    run_bench("compare", "--baseline", "last:main", "a-twice-slow", "--threshold", "0.3", "--history-db", str(db),
              cwd=runs, check_exit=1)
    run_bench("compare", "last:nobranch", "a-same", "--history-db", str(db), cwd=runs, check_exit=2)


def test_pytest_benchmark_compare_reads_the_export(runs):
    out = runs / "pb.json"
    run_bench("export", "a", "--format", "pytest-benchmark", "-o", str(out), cwd=runs)
    data = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(data)
    bench_ = next(b for b in data["benchmarks"] if b["group"] == "tpot_ms")
    assert bench_["stats"]["rounds"] == 20 and bench_["stats"]["median"] > 0.0199  # >= 20 ms per token, in seconds
    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out)],
                          capture_output=True, text=True, cwd=runs, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "tpot_ms" in proc.stdout and "Median" in proc.stdout
    run_bench("export", "a", "--format", "csv", "-o", str(runs / "a.csv"), cwd=runs)
    lines = (runs / "a.csv").read_text().splitlines()
    assert lines[0].startswith("case,variant,model") and any(",tpot_ms,ms,lower," in line for line in lines)


CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src || 'error')), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute('data-images', ok.length + '/' + imgs.length);
  document.body.setAttribute('data-errors', window.__errors.length);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    return path


def _chromium_run(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_html_report_for_one_run_and_side_by_side(runs):
    out = run_bench("report", "a", cwd=runs).stdout
    html = (runs / "reports" / "a" / "report.html").read_text()
    assert "reports/a/report.html" in out and (runs / "reports" / "a" / "report.md").exists()
    for plot in ("plot-pareto", "plot-latency", "plot-scaling-batch_size", "plot-memory"):
        assert f'id="{plot}"' in html, plot
    assert "<link" not in html and "http://" not in html and "https://" not in html  # self-contained
    assert '<a href="#metric-tpot_ms">TPOT ms</a>' in html  # the Markdown report's header, linked to the glossary
    assert 'id="metric-tpot_ms"' in html
    run_bench("report", "a", "failed", cwd=runs)
    both = (runs / "reports" / "a+1" / "report.html").read_text()
    assert "2 runs side by side" in both and "injected failure" in both and "status-failed" in both


def test_html_report_renders_in_headless_chromium(runs, tmp_path):
    _chromium()
    run_bench("report", "a", cwd=runs)
    page = tmp_path / "report.html"
    html = (runs / "reports" / "a" / "report.html").read_text()
    page.write_text(html.replace("</body>", CHECKER + "</body>"))
    dom = _chromium_run(page.as_uri(), tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_images = html.count("<img ")
    assert n_images >= 4
    assert f'data-images="{n_images}/{n_images}"' in dom.stdout  # every plot decoded with a real size
    assert 'data-errors="0"' in dom.stdout
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    proc = _chromium_run((runs / "reports" / "a" / "report.html").as_uri(), tmp_path, "--window-size=1280,3000",
                         f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1280)
    assert pixels[..., :3].std() > 0.05 and (pixels[..., :3].mean(axis=2) < 0.5).mean() > 0.005  # ink, not blank
    shutil.copy(shot, runs / "screenshot.png")


def _with_machine(root, source: str, name: str, **changes) -> None:
    """Copy a run with every record's machine fingerprint changed."""
    shutil.copytree(root / "results" / source, root / "results" / name)
    records = record_lines(root / "results" / name)
    for r in records:
        assert r.machine is not None  # every new record names the machine that measured it
        r.machine = r.machine.model_copy(update=changes)
    (root / "results" / name / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))


def test_cases_measured_on_different_hardware_are_not_compared(runs):
    _with_machine(runs, "a", "a-elsewhere", machine_id="0123456789abcdef", cpu_model="another CPU")
    proc = run_bench("compare", "a", "a-elsewhere", "--json", "elsewhere.json", cwd=runs, check_exit=3)
    result = json.loads((runs / "elsewhere.json").read_text())
    assert result["comparisons"] == [] and "on the same machine" in result["verdict"]
    assert all("different hardware" in n["current"] for n in result["not_compared"]), proc.stdout
    # the same hardware under another host name and driver is the same machine: compared (identical data)
    _with_machine(runs, "a", "a-renamed", hostname="another-host", gpu_driver="999.0")
    proc = run_bench("compare", "a", "a-renamed", "--json", "renamed.json", cwd=runs, check_exit=None)
    renamed = json.loads((runs / "renamed.json").read_text())
    assert proc.returncode in (0, 4)  # identical data: never a regression (4: a noisy run's wide intervals)
    assert renamed["comparisons"] and not renamed["not_compared"]


def _quiet_copy(root, source: str, name: str) -> None:
    """Copy a run with every latency case's machine state as if measured on an idle machine."""
    shutil.copytree(root / "results" / source, root / "results" / name)
    records = record_lines(root / "results" / name)
    for r in records:
        if r.latency is not None and r.latency.machine is not None:
            r.latency.machine = r.latency.machine.model_copy(update={
                "other_cpu_load_mean": 0.0, "other_cpu_load_max": 0.0, "contended": False})
    (root / "results" / name / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))


def test_the_gate_result_is_versioned_and_read_back_typed_by_confirming_and_only_from(runs):
    _quiet_copy(runs, "a", "a-quiet")  # a re-measurement confirms only when it was not contended (as "a" may be here)
    case_id = slowed_copy(runs, "a-quiet", "a-slow-confirm", "slow", 2, 1.10)
    run_bench("compare", "a-quiet", "a-slow-confirm", "--json", "first.json", cwd=runs, check_exit=1)
    first = json.loads((runs / "first.json").read_text())
    assert first["format_version"] == 1 and case_id in first["flagged"]
    # the re-measurement (here: the same slowed run) confirms the regression it flagged
    proc = run_bench("compare", "a-quiet", "a-slow-confirm", "--confirming", "first.json", "--json", "again.json",
                     cwd=runs, check_exit=1)
    again = json.loads((runs / "again.json").read_text())
    tpot = next(c for c in again["confirmation"] if c["case"] == case_id and c["metric"] == "tpot_ms")
    assert tpot == {"case": case_id, "metric": "tpot_ms", "first": "regression", "again": "regression",
                    "confirmed": True}
    assert "#### Re-measured" in proc.stdout and "regression(s) confirmed" in again["verdict"]
    # read back typed (bench/gate/result.py): the JSON's strings and numbers are the enums' values
    from bench.errors import ExitCode
    from bench.gate.result import Status, Verdict, read_result

    typed = read_result(runs / "again.json", "--confirming")
    assert typed.verdict is Verdict.REGRESSION and typed.exit_code is ExitCode.REGRESSION
    assert typed.verdict_text == again["verdict"] and f"> {typed.verdict_text}" in proc.stdout
    confirmed = next(c for c in typed.confirmation if c.case == case_id and c.metric == "tpot_ms")
    assert confirmed.first is Status.REGRESSION and confirmed.again is Status.REGRESSION
    # --only-from re-measures exactly the flagged cases (with their reference): checked by validate's listing
    (runs / "newer.json").write_text(json.dumps({**first, "format_version": 99}))
    (runs / "broken.json").write_text(json.dumps({**first, "comparisons": "none"}))
    for option, args in (("--confirming", ["compare", "a", "b"]), ("--only-from", ["run", "suite.yaml"])):
        for name, message in (("newer.json", "comparison format 99 is newer"),
                              ("broken.json", "comparisons: Input should be a valid"),
                              ("missing.json", "not a comparison written by compare --json")):
            out = run_bench(*args, option, name, cwd=runs, check_exit=2)
            assert f"{option} {name}" in out.stderr and message in out.stderr and "Traceback" not in out.stderr
