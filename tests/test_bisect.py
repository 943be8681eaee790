"""`bench bisect` through the real CLI on synthetic git repositories with known answers.

Each repository is made here with `git init`: a suite and a user's backend module (`slowpkg/engine.py`, the
known-answer backend with its per-token wait set in the module), then commits. A commit that changes the wait makes
every later commit slower by a known factor; waits are sleeps (then a short spin), which a loaded machine delays
little, and each step runs 6 A/B rounds of a fresh `bench run` per side, so these tests are slow on purpose.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_bench

ENGINE = '''"""A user's backend: the known-answer backend with the wait of a token set here."""
from tests.known_answer_backend import KnownAnswerBackend

TOKEN_DELAY_S = {delay}


class Engine(KnownAnswerBackend):
    def load(self, model_path):
        self.options = self.options.model_copy(update={{"token_delay_s": TOKEN_DELAY_S}})
        super().load(model_path)
'''

ALTERNATING = '''"""Every other process of this tree waits 1.3 x per token, the others 0.8 x: rounds cannot settle it"""
from pathlib import Path

from tests.known_answer_backend import KnownAnswerBackend


class Engine(KnownAnswerBackend):
    def load(self, model_path):
        loads = Path(__file__).with_name(".loads")
        count = int(loads.read_text()) if loads.exists() else 0
        loads.write_text(str(count + 1))
        factor = 1.3 if count % 2 else 0.8
        self.options = self.options.model_copy(update={"token_delay_s": 0.01 * factor})
        super().load(model_path)
'''

SUITE = """name: bisect-demo
models: [synthetic]
backends:
  - {backend: "slowpkg.engine:Engine", label: engine}
workloads: [{batch_size: 1, prompt_tokens: 8, new_tokens: 5}]
tasks: [latency]
repetitions: {warmup: 1}
regression: {threshold: 0.10}
timeout_s: 60
"""
FAST, SLOW = 0.010, 0.0115  # the slow commit waits 15 % longer per token


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=bench test", "-c", "user.email=test@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(where: Path, commits: int, slow_at: int | None, engine_at_slow: str | None = None) -> list[str]:
    """A repository of 1 + `commits` commits (oldest first, their shas returned): commit 0 holds the suite and the
    engine; commit `slow_at` makes it 15 % slower (or replaces it with `engine_at_slow`); the others touch notes."""
    (where / "slowpkg").mkdir(parents=True)
    (where / "suites").mkdir()
    (where / "slowpkg" / "__init__.py").write_text("")
    (where / "slowpkg" / "engine.py").write_text(ENGINE.format(delay=FAST))
    (where / "suites" / "bisect.yaml").write_text(SUITE)
    _git(where, "init", "-q", "-b", "main")
    _git(where, "add", "-A")
    _git(where, "commit", "-q", "-m", "the engine and its suite")
    for number in range(1, commits + 1):
        subject = f"change {number}"
        if number == slow_at:
            (where / "slowpkg" / "engine.py").write_text(engine_at_slow or ENGINE.format(delay=SLOW))
            subject += ": the engine waits longer per token"
        with (where / "notes.txt").open("a") as notes:
            notes.write(f"{subject}\n")
        _git(where, "add", "-A")
        _git(where, "commit", "-q", "-m", subject)
    return _git(where, "rev-list", "--reverse", "HEAD").split()


def case_id(repo: Path) -> str:
    listed = run_bench("validate", "suites/bisect.yaml", cwd=repo).stdout
    return next(line.strip() for line in listed.splitlines() if line.startswith("  engine."))


def bisect(repo: Path, results: Path, *args: str, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    return run_bench("bisect", *args, "--results-dir", str(results), cwd=repo, check_exit=check_exit)


def steps(results: Path, bisect_id: str) -> list[dict]:
    return [json.loads(line) for line in (results / f"bisect-{bisect_id}" / "steps.jsonl").read_text().splitlines()]


def result(results: Path, bisect_id: str) -> dict:
    return json.loads((results / f"bisect-{bisect_id}" / "result.json").read_text())


@pytest.mark.slow
def test_names_the_commit_that_made_the_case_slower(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    shas = make_repo(repo, commits=16, slow_at=11)
    proc = bisect(repo, results, "HEAD~16", "HEAD", "--suite", "suites/bisect.yaml", "--case", case_id(repo),
                  "--id", "known", "--repetitions", "3")
    answer, log = result(results, "known"), steps(results, "known")
    assert answer["outcome"] == "found" and answer["first_bad"] == shas[11], proc.stdout
    assert f"first bad commit: {shas[11]}" in proc.stdout
    assert len(log) <= 5 and answer["steps"] == len(log)
    assert log[0]["endpoints"] and log[0]["commit"] == shas[16] and log[0]["verdict"] == "regression"
    for step in log:  # each step's verdict is the known answer: 15 % slower from commit 11 on, threshold 10 %
        assert step["verdict"] == ("regression" if step["position"] >= 11 else "unchanged"), step
        assert step["threshold"] == 0.10 and len(step["rounds"]) >= 6
        assert {tuple(r["order"]) for r in step["rounds"]} <= {("good", "candidate"), ("candidate", "good")}
    slow_step = next(s for s in log if s["position"] == 11)
    assert 1.10 < slow_step["ratio"] < 1.22 and slow_step["ci_low"] > 1.0
    # every round's raw samples are kept; the worktrees are gone
    first_round = log[0]["rounds"][0]["runs"]["candidate"]
    assert (results / "bisect-known" / first_round / "samples").is_dir()
    assert not (results / "bisect-known" / "trees").exists()
    assert _git(repo, "worktree", "list").count("\n") == 0


@pytest.mark.slow
def test_no_change_blames_no_commit(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    make_repo(repo, commits=4, slow_at=None)
    proc = bisect(repo, results, "HEAD~4", "HEAD", "--suite", "suites/bisect.yaml", "--case", case_id(repo),
                  "--id", "same", "--repetitions", "3")
    answer = result(results, "same")
    assert answer["outcome"] == "no change" and answer["first_bad"] is None
    assert "no change found" in proc.stdout and "first bad commit" not in proc.stdout
    assert [s["verdict"] for s in steps(results, "same")] == ["unchanged"]  # the endpoints, nothing more


@pytest.mark.slow
def test_a_killed_bisect_resumes_without_redoing_finished_steps(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    shas = make_repo(repo, commits=3, slow_at=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", "bisect", "HEAD~3", "HEAD", "--suite", "suites/bisect.yaml", "--case",
               case_id(repo), "--id", "killed", "--repetitions", "3", "--results-dir", str(results)]
    first = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_path = results / "bisect-killed" / "steps.jsonl"
    second_step = results / "bisect-killed" / "runs" / shas[1][:12]  # (0 + 3) // 2: the second step's commit
    deadline = time.monotonic() + 300
    while not (second_step.is_dir() and any(second_step.iterdir())):  # killed in the middle of the second step
        assert first.poll() is None and time.monotonic() < deadline, "the bisect ended before it could be killed"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = log_path.read_bytes()
    assert len(before.splitlines()) == 1  # the endpoints' step, finished; the second one cut short
    endpoint_runs = {p: p.stat().st_mtime_ns for p in (results / "bisect-killed" / "runs" / shas[3][:12]).iterdir()}

    proc = bisect(repo, results, "--resume", "killed")
    assert "resuming: 1 finished step(s) kept" in proc.stdout
    after = log_path.read_bytes()
    assert after.startswith(before)  # the finished step is kept as it was, not measured again
    assert {p: p.stat().st_mtime_ns for p in (results / "bisect-killed" / "runs" / shas[3][:12]).iterdir()} == \
        endpoint_runs
    log = steps(results, "killed")
    assert [s["commit"] for s in log] == [shas[3], shas[1], shas[2]]  # each commit measured once
    assert result(results, "killed")["first_bad"] == shas[2]
    bisect(repo, results, "--resume", "killed", check_exit=2)  # a finished bisect is not run again


@pytest.mark.slow
def test_a_step_that_cannot_decide_stops_inconclusive(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    make_repo(repo, commits=1, slow_at=1, engine_at_slow=ALTERNATING)
    proc = bisect(repo, results, "HEAD~1", "HEAD", "--suite", "suites/bisect.yaml", "--case", case_id(repo),
                  "--id", "unsure", "--repetitions", "3", "--extra-rounds", "2", check_exit=4)
    assert "inconclusive" in proc.stdout and "first bad commit" not in proc.stdout
    (step,) = steps(results, "unsure")
    assert step["verdict"] == "inconclusive" and step["extended"] and len(step["rounds"]) == 8
    assert step["ci_low"] < 0.9 and step["ci_high"] > 1.2  # 0.8 x and 1.3 x rounds: the interval spans both
    assert f"[{step['ci_low']:.3f}, {step['ci_high']:.3f}]" in proc.stdout  # the step's figures are printed
    assert result(results, "unsure")["outcome"] == "inconclusive"


@pytest.mark.slow
def test_a_commit_that_cannot_run_the_case_stops_the_bisect_with_exit_3(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    make_repo(repo, commits=0, slow_at=None)
    _git(repo, "rm", "-q", "suites/bisect.yaml")  # commit 1 of 2 loses the suite, commit 2 (BAD) has it again
    _git(repo, "commit", "-q", "-m", "no suite")
    (repo / "suites").mkdir(exist_ok=True)
    (repo / "suites" / "bisect.yaml").write_text(SUITE)
    (repo / "slowpkg" / "engine.py").write_text(ENGINE.format(delay=SLOW))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "the suite again, and a slower engine")
    shas = _git(repo, "rev-list", "--reverse", "HEAD").split()
    proc = bisect(repo, results, shas[0], shas[2], "--suite", "suites/bisect.yaml", "--case", case_id(repo), "--id",
                  "broken", "--repetitions", "3", check_exit=3)
    assert f"commit {shas[1][:12]} has no suites/bisect.yaml" in proc.stdout
    assert result(results, "broken")["outcome"] == "failed"
    assert [s["commit"] for s in steps(results, "broken")] == [shas[2]]  # the endpoints, kept
    again = bisect(repo, results, "--resume", "broken", check_exit=3)  # a failed bisect may resume once fixed
    assert "resuming: 1 finished step(s) kept" in again.stdout and len(steps(results, "broken")) == 1
    assert _git(repo, "worktree", "list").count("\n") == 0


def test_bad_input_exits_2_with_a_clear_message_and_measures_nothing(tmp_path):
    repo, results = tmp_path / "repo", tmp_path / "results"
    make_repo(repo, commits=2, slow_at=None)
    case = case_id(repo)
    common = ("--suite", "suites/bisect.yaml", "--case", case, "--results-dir", str(results))

    def refused(*args: str) -> str:
        proc = run_bench("bisect", *args, cwd=repo, check_exit=2)
        return proc.stderr

    assert "is not an ancestor of BAD" in refused("HEAD", "HEAD~2", *common)
    assert "GOOD 'no-such-commit': no such commit" in refused("no-such-commit", "HEAD", *common)
    assert "are the same commit" in refused("HEAD", "HEAD", *common)
    missing = refused("HEAD~2", "HEAD", "--suite", "suites/bisect.yaml", "--case", "engine.synthetic.b1-p9-n8.00000000",
                      "--results-dir", str(results))
    assert "case engine.synthetic.b1-p9-n8.00000000 is not in suites/bisect.yaml at commit" in missing
    assert "engine.synthetic.b1-p8-n5.*" in missing  # the cases it has
    assert "--metric ppl" in refused("HEAD~2", "HEAD", *common, "--metric", "ppl")
    assert "--rounds 3: at least 6" in refused("HEAD~2", "HEAD", *common, "--rounds", "3")
    assert "not the id of a latency case" in refused("HEAD~2", "HEAD", "--suite", "suites/bisect.yaml", "--case",
                                                     "engine.synthetic.perplexity.1234abcd")
    (repo / "suites" / "bisect.yaml").write_text(SUITE.replace("0.10", "0.20"))
    assert "suites/bisect.yaml has uncommitted changes" in refused("HEAD~2", "HEAD", *common)
    (repo / "suites" / "new.yaml").write_text(SUITE)
    assert "suites/new.yaml is not committed" in refused("HEAD~2", "HEAD", "--suite", "suites/new.yaml", "--case",
                                                         case)
    (tmp_path / "elsewhere.yaml").write_text(SUITE)
    assert "not inside a git repository" in refused("HEAD~2", "HEAD", "--suite", str(tmp_path / "elsewhere.yaml"),
                                                    "--case", case)
    assert "--resume continues with the arguments" in refused("HEAD~2", "--resume", "x")
    assert "no bisect" in refused("--resume", "nothing-here", "--results-dir", str(results))
    # nothing measured, nothing left behind: no bisect directory, no worktree
    assert not results.exists() or not any(results.iterdir())
    assert _git(repo, "worktree", "list").count("\n") == 0
