"""Kills, resumes and concurrent writers, through the real CLI: no finished case lost, none redone, every
line parses, no worker outlives its runner, one writer per run, a resumed run finishes the suite it began."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import KNOWN_ANSWER, ROOT, run_bench, write_suite

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _workers(run_dir: Path) -> list[psutil.Process]:
    """Live worker processes of a run (found by the run directory in their command line)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "bench.run.worker" in cmdline and str(run_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(run_dir: Path) -> list[str]:
    path = run_dir / "cases.jsonl"
    return path.read_text().splitlines() if path.exists() else []


HANG = f"""
name: hang
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: hangs, options: {{fail: hang, fail_marker: fixed}}}}
workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 6, max: 6}}
perplexity: {{text: eval.txt}}
timeout_s: 120
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 40)
    return tmp_path


def test_a_killed_runner_takes_its_worker_with_it_within_a_second(workdir):
    write_suite(workdir / "s.yaml", HANG)
    runner = _start(workdir, "run", "s.yaml", "--run-id", "k")
    run_dir = workdir / "results" / "k"
    (worker,) = _wait_for(lambda: _workers(run_dir), 60, "the worker to start")
    os.kill(runner.pid, signal.SIGKILL)  # the runner alone, as a crash or the OOM killer would
    runner.wait()
    killed_at = time.monotonic()
    _wait_for(lambda: not _workers(run_dir), 1.0, "the orphaned worker to die")
    assert time.monotonic() - killed_at < 1.0 and not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    # the lock died with the runner: an immediate resume runs the case, alone
    (workdir / "fixed").touch()
    run_bench("run", "--resume", "k", cwd=workdir)
    assert len(_lines(run_dir)) == 1


def test_a_second_writer_of_a_run_is_refused_and_told_who_holds_it(workdir):
    write_suite(workdir / "s.yaml", HANG)
    first = _start(workdir, "run", "s.yaml", "--run-id", "w")
    run_dir = workdir / "results" / "w"
    _wait_for(lambda: _workers(run_dir), 60, "the first run's worker")
    proc = run_bench("run", "--resume", "w", cwd=workdir, check_exit=2)
    assert f"run 'w' is being written by pid {first.pid}" in proc.stderr and "Traceback" not in proc.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert _lines(run_dir) == []  # the refused writer appended nothing


def test_resume_refuses_a_suite_edited_since_the_run_began(workdir):
    suite = f"""
        name: edit
        models: [synthetic]
        backends: [{{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: 0.001}}}}]
        workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 6, max: 6}}
        perplexity: {{text: eval.txt}}
        """
    write_suite(workdir / "s.yaml", suite)
    run_bench("run", "s.yaml", "--run-id", "e", cwd=workdir)
    snapshot = workdir / "results" / "e" / "suite.yaml"
    added = f', {{backend: "{KNOWN_ANSWER}", label: b, options: {{token_delay_s: 0.001}}}}]'
    snapshot.write_text(snapshot.read_text().replace("0.001}}]", "0.001}}" + added, 1))
    proc = run_bench("run", "--resume", "e", cwd=workdir, check_exit=2)
    assert "changed since run 'e' started" in proc.stderr and "--allow-edited-suite" in proc.stderr
    assert len(_lines(workdir / "results" / "e")) == 1
    run_bench("run", "--resume", "e", "--allow-edited-suite", cwd=workdir)
    assert [json.loads(line)["case"]["variant"] for line in _lines(workdir / "results" / "e")] == ["a", "b"]


STRESS = f"""
name: stress
models: [synthetic]
backends:
  - backend: "{KNOWN_ANSWER}"
    options: {{token_delay_s: [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]}}
workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 4}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 6, max: 6}}
perplexity: {{text: eval.txt}}
timeout_s: 60
"""


@pytest.mark.slow
def test_random_kills_and_resumes_lose_nothing_redo_nothing_and_leave_no_orphan(workdir):
    write_suite(workdir / "s.yaml", STRESS)
    run_dir = workdir / "results" / "s"
    rng = random.Random(7)
    kills = 0
    args = ["run", "s.yaml", "--run-id", "s"]
    for attempt in range(8):  # up to 6 random kills, then resumes left to finish
        before = _lines(run_dir)
        if kills == 3:  # a kill in the middle of writing a record: the fragment a torn write(2) leaves behind
            with open(run_dir / "cases.jsonl", "a") as f:
                f.write('{"case": {"id": "torn')
        proc = _start(workdir, *args)
        args = ["run", "--resume", "s"]
        try:
            proc.wait(timeout=rng.uniform(0.5, 4.0) if attempt < 6 else 300)
            finished = True
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)  # the runner only; its worker must follow it
            proc.wait()
            kills += 1
            finished = False
        _wait_for(lambda: not _workers(run_dir), 1.0, "orphaned workers to die")
        after = _lines(run_dir)
        complete = [line for line in after if line.endswith("}")]
        records = [json.loads(line) for line in complete]  # every whole line parses
        ids = [r["case"]["id"] for r in records]
        assert len(ids) == len(set(ids)), "a finished case ran twice"
        kept = [line for line in before if line.endswith("}")]
        assert complete[: len(kept)] == kept  # nothing that had finished was lost or rewritten
        if finished:
            assert proc.returncode == 0, proc.stderr.read()
            break
    assert kills >= 2, "the test never interrupted a run: make the suite longer"
    meta = json.loads((run_dir / "run.json").read_text())
    final = [json.loads(line)["case"]["id"] for line in _lines(run_dir)]
    assert sorted(final) == sorted(meta["case_ids"])  # every planned case exactly once, the torn fragment cut
    assert list(run_dir.glob("cases.jsonl.torn-*")) or kills < 4


def test_ctrl_c_while_building_the_model_leaves_a_resumable_run_and_no_traceback(workdir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("empty-cache")  # nothing built: the run starts by building tiny-llama
    write_suite(workdir / "s.yaml", """
        name: build
        models: [tiny-llama]
        backends: [{backend: hf-eager}]
        tasks: [latency]
        """)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "s.yaml", "--run-id", "b"], cwd=workdir,
                            env={**ENV, "BENCH_CACHE": str(cache)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: (workdir / "results" / "b" / "run.json").exists(), 60, "the run to start")
    time.sleep(1.0)  # in the corpus scan or the training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: python -m bench run --resume b" in err and "Traceback" not in err
    assert not [p for p in cache.rglob("*") if p.name.startswith(".") and p.is_dir()]  # no half-built entry left
