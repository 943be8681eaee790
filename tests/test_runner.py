"""The runner end to end through the CLI: isolated cases, recorded failures, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import KNOWN_ANSWER, ROOT, record_lines, run_bench, write_suite

FAILURES_SUITE = f"""
name: failures
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: fine}}
  - {{backend: "{KNOWN_ANSWER}", label: aborts, options: {{fail: abort}}}}
  - {{backend: "{KNOWN_ANSWER}", label: raises, options: {{fail: raise}}}}
  - {{backend: "{KNOWN_ANSWER}", label: hangs, options: {{fail: hang}}}}
  - {{backend: "{KNOWN_ANSWER}", label: no-memory, options: {{fail: memory}}}}
  - {{backend: "{KNOWN_ANSWER}", label: no-package, options: {{fail: missing-package}}}}
  - {{backend: "{KNOWN_ANSWER}", label: fine-too, options: {{token_delay_s: 0.001}}}}
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 6, max: 6}}
perplexity: {{text: eval.txt, window: 16, stride: 8}}
timeout_s: 15  # over both process sets of a case, loads included: room for a loaded 2-core machine
"""


def _records(results):
    run_dir = next(results.iterdir())
    return run_dir, record_lines(run_dir)


def test_each_failure_is_recorded_with_its_reason_and_the_other_cases_run(tmp_path):
    (tmp_path / "eval.txt").write_text("some evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", FAILURES_SUITE)
    proc = run_bench("run", "suite.yaml", cwd=tmp_path, check_exit=3)
    run_dir, records = _records(tmp_path / "results")
    by_label = {r.variant: r for r in records}
    assert len(records) == 7
    assert by_label["fine"].status == by_label["fine-too"].status == "ok"
    assert by_label["fine-too"].value("tpot_ms") > 0.9  # 1 ms injected delay
    assert by_label["aborts"].status == "failed" and "SIGABRT" in by_label["aborts"].reason
    assert by_label["raises"].reason == "RuntimeError: injected failure"
    assert "injected failure" in by_label["raises"].output_tail  # the traceback's last lines are kept
    assert by_label["hangs"].reason.startswith("timeout: still running after 15 s")
    assert by_label["no-memory"].reason.startswith("out of memory")
    assert by_label["no-package"].status == "skipped"
    assert "pip install 'bench[known-answer]'" in by_label["no-package"].reason
    # raw samples exist for the cases that finished, and the report lists every problem with its reason
    assert len(json.loads((run_dir / "samples" / f"{by_label['fine'].id}.json").read_text())["stamps_ns"]) == 6
    report = (tmp_path / "reports" / run_dir.name / "report.md").read_text()
    for label in ["aborts", "raises", "hangs", "no-memory", "no-package"]:
        assert by_label[label].id in report
    assert "report:" in proc.stdout


RESUME_SUITE = f"""
name: resume
models: [synthetic]
backends:
  - backend: "{KNOWN_ANSWER}"
    options: {{token_delay_s: 0.0101}}
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: [10, 11, 12, 13]}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 6, max: 6}}
perplexity: {{text: eval.txt}}
"""
# four workloads: four units (bench/run/plan.py), each recorded when it ends, a worker start (~1 s) apart: a kill
# after the second record lands between units (variants of one workload are one unit, recorded together)


def test_a_killed_run_resumes_without_redoing_or_losing_finished_cases(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", RESUME_SUITE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "bench", "run", "suite.yaml", "--run-id", "r1"], cwd=tmp_path,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cases_file = tmp_path / "results" / "r1" / "cases.jsonl"
    deadline = time.monotonic() + 120
    while not (cases_file.exists() and cases_file.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the whole process group: runner and the case in flight
    run.wait()
    before = cases_file.read_text().splitlines()
    assert 2 <= len(before) < 4

    proc = run_bench("run", "--resume", "r1", cwd=tmp_path)
    after = cases_file.read_text().splitlines()
    assert after[: len(before)] == before  # finished cases untouched
    ids = [json.loads(line)["case"]["id"] for line in after]
    assert len(ids) == len(set(ids)) == 4  # nothing redone, nothing lost
    assert f"{len(before)} of 4 cases already finished" in proc.stderr
    # a second resume has nothing left to do
    assert run_bench("run", "--resume", "r1", cwd=tmp_path).returncode == 0
    assert len(cases_file.read_text().splitlines()) == 4


def test_retry_failed_reruns_only_the_failed_case(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", f"""
        name: retry
        models: [synthetic]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: ok}}
          - {{backend: "{KNOWN_ANSWER}", label: flaky, options: {{fail: raise, fail_marker: fixed}}}}
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 6, max: 6}}
        perplexity: {{text: eval.txt}}
        """)
    first = run_bench("run", "suite.yaml", "--run-id", "r", "--no-report", cwd=tmp_path, check_exit=3)
    assert not (tmp_path / "reports").exists() and "python -m bench report r" in first.stderr  # records only
    (tmp_path / "fixed").touch()
    run_bench("run", "--resume", "r", "--no-report", cwd=tmp_path, check_exit=3)  # plain resume keeps the failure
    run_bench("run", "--resume", "r", "--retry-failed", cwd=tmp_path, check_exit=0)
    assert "| flaky |" in (tmp_path / "reports" / "r" / "report.md").read_text()  # without --no-report: written
    _, records = _records(tmp_path / "results")
    assert [r.variant for r in records] == ["ok", "flaky", "flaky"]
    assert [r.status for r in records] == ["ok", "failed", "ok"]


def test_a_worker_finds_bench_on_its_path_whatever_its_interpreter():
    """A side environment has no bench installed: the runner puts the repository on the worker's PYTHONPATH."""
    from bench.exec.envs import PROJECT_ROOT as ENVS_ROOT
    from bench.records.schema import CaseSpec
    from bench.run.spawn import child_env

    case = CaseSpec(id="x", suite="s", model="m", backend="b", variant="v", task="latency", threads=3)
    env = child_env(case)
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "bench" / "__init__.py").is_file() and Path(first) == ROOT
    assert (ENVS_ROOT / "pyproject.toml").is_file()  # where the side envs read bench's core dependencies
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


def test_each_process_set_measures_its_share_of_the_plan(tmp_path):
    """Three process sets: where the interval never meets ci_target each set measures a third of `max`
    (10, 10, 10 of 30); where any interval meets it, the first set measures until one exists (a median's
    95 % interval needs 6 repetitions) and the others their third of `min` (2 each)."""
    (tmp_path / "eval.txt").write_text("text for the known-answer backend " * 20)
    for label, target, expected in (("never", "0.000000001", [10, 10, 10]), ("at-once", "100.0", [6, 2, 2])):
        write_suite(tmp_path / f"{label}.yaml", f"""
            name: shares
            models: [synthetic]
            backends: [{{backend: "{KNOWN_ANSWER}", options: {{token_delay_s: 0.001}}}}]
            workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
            tasks: [latency]
            repetitions: {{warmup: 0, min: 6, max: 30, processes: 3, round_repetitions: 2, ci_target: {target}}}
            perplexity: {{text: eval.txt}}
            """)
        run_bench("run", f"{label}.yaml", "--run-id", label, cwd=tmp_path)
        (record,) = record_lines(tmp_path / "results" / label)
        process = json.loads((tmp_path / "results" / label / "samples" / f"{record.id}.json").read_text())["process"]
        assert [process.count(k) for k in range(3)] == expected, label
        assert record.latency.stop_reason == ("max_repetitions" if label == "never" else "ci_target_met")
        # later sets load side by side; the load time kept is the first set's, loaded alone
        first = json.loads((tmp_path / "results" / label / "tmp" / f"{record.id}.p0.json").read_text())
        assert record.metrics["load_s"] == first["metrics"]["load_s"]


def test_timeout_bounds_the_whole_case_and_sets_with_nothing_left_are_not_started(tmp_path):
    """30 process sets for a plan of 3 repetitions, one per round: only the 3 sets that measure something start a
    process; and timeout_s bounds a case over all its sets, not each step."""
    (tmp_path / "eval.txt").write_text("text for the known-answer backend " * 20)
    write_suite(tmp_path / "sets.yaml", f"""
        name: sets
        models: [synthetic]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: small, options: {{token_delay_s: 0.001}}}}
          - {{backend: "{KNOWN_ANSWER}", label: long, options: {{token_delay_s: 1.5}}}}
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 6}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 3, max: 3, processes: 30, round_repetitions: 1, ci_target: 0.000001}}
        perplexity: {{text: eval.txt}}
        timeout_s: 20
        """)
    started = time.monotonic()
    run_bench("run", "sets.yaml", "--run-id", "sets", cwd=tmp_path, check_exit=3)
    wall = time.monotonic() - started
    records = {r.variant: r for r in record_lines(tmp_path / "results" / "sets")}
    small = records["small"]
    assert small.status == "ok" and small.latency.repetitions == 3 and small.latency.processes == 3
    assert (tmp_path / "results" / "sets" / "logs" / f"{small.id}.log").read_text().count("=== process") == 3
    # 'long' takes 9 s per generation, 27 s for its 3: past 20 s in its third set, though no step takes 20 s
    assert records["long"].status == "failed"
    assert "when the case had used its timeout_s (20 s, counted over every process set)" in records["long"].reason
    # no set was started for 'long' once its timeout was used (30 sets of loads would take minutes): counted, not
    # timed, so a busy machine cannot flip it
    long_log = (tmp_path / "results" / "sets" / "logs" / f"{records['long'].id}.log").read_text()
    assert long_log.count("=== process") <= 3, f"{long_log.count('=== process')} sets started in {wall:.0f} s"


def test_cases_run_one_process_each_record_their_failures_through_the_same_handle(tmp_path):
    """Perplexity cases run one worker process per case (bench/run/runner.py `run_case_process`): a crash, a raised
    error, a hang past timeout_s and a missing package are recorded with the reasons the interleaved runner gives,
    the timeout in the one message, and the others finish."""
    (tmp_path / "eval.txt").write_text("some evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", FAILURES_SUITE.replace("tasks: [latency]", "tasks: [perplexity]")
                .replace("timeout_s: 15", "timeout_s: 8"))
    run_bench("run", "suite.yaml", "--run-id", "p", cwd=tmp_path, check_exit=3)
    by_label = {r.variant: r for r in record_lines(tmp_path / "results" / "p")}
    assert by_label["fine"].status == by_label["fine-too"].status == "ok"
    assert by_label["fine"].value("perplexity") > 1
    assert by_label["aborts"].status == "failed" and by_label["aborts"].reason == "worker killed by SIGABRT"
    assert by_label["raises"].reason == "RuntimeError: injected failure"
    assert "injected failure" in by_label["raises"].output_tail
    assert by_label["hangs"].reason == "timeout: still running after 8 s; killed"
    assert by_label["no-memory"].reason.startswith("out of memory")
    assert by_label["no-package"].status == "skipped" and by_label["no-package"].output_tail is not None
