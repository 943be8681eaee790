"""The search: check that the bad commit is slower than the good one, then halve the commits between them.

The commits from GOOD to BAD (first-parent line, `git.py`) are searched with the invariant "the good side is not
slower than GOOD, the bad side is": the first step measures BAD against GOOD (the endpoints) and the search goes on
only on a *regression*; *unchanged* or *improvement* ends with "no change found", blaming no commit. Each further
step measures the middle commit against GOOD (`rounds.py`): *regression* means the change is at or before it,
*unchanged* or *improvement* after it. An *inconclusive* step is measured once more with `extra_rounds` added to
its rounds; still inconclusive, the bisect stops and says so with the step's figures, never guessing. n commits
after GOOD take at most 1 + ceil(log2 n) steps.

Every judged step is appended to the bisect's `steps.jsonl` (`log.py`) before the next one starts; `--resume`
replays the search from it, measuring only the steps it lacks.
"""
from __future__ import annotations

import math
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.bisect.git import Repo
from bench.bisect.log import BisectDir, Header, Outcome, Step
from bench.bisect.rounds import LEVEL, MIN_ROUNDS, Bench, Unmeasurable, case_task, judge
from bench.errors import BadInput, ExitCode
from bench.metrics import LATENCY_SAMPLES, METRICS, THROUGHPUTS

METRICS_TIMED = (*LATENCY_SAMPLES, *THROUGHPUTS)  # what a latency case's raw samples give per repetition


def start(results_dir: Path, suite: Path, good: str, bad: str, case: str, metric: str, threshold: float | None,
          rounds: int, extra_rounds: int, repetitions: int, seed: int, bisect_id: str | None) -> tuple[Repo,
                                                                                                     BisectDir]:
    """Check the arguments (BadInput: nothing measured, nothing left behind) and write the bisect's header."""
    if metric not in METRICS_TIMED:
        raise BadInput(f"--metric {metric}: bisect times a latency metric with raw samples: "
                       f"{', '.join(METRICS_TIMED)}")
    if rounds < MIN_ROUNDS:
        raise BadInput(f"--rounds {rounds}: at least {MIN_ROUNDS} (the 95 % interval of the rounds' median ratio "
                       f"needs {MIN_ROUNDS})")
    if not case_task(case).startswith("b"):
        raise BadInput(f"--case {case}: not the id of a latency case (<variant>.<model>.<workload>.<hash>, as "
                       f"python -m bench validate lists them); bisect times latency cases")
    if not suite.is_file():
        raise BadInput(f"--suite {suite}: no such file")
    repo = Repo(suite)
    relative = repo.relative(suite, "--suite")
    dirty = repo.uncommitted(relative)
    if dirty:
        raise BadInput(f"--suite {suite} {dirty}")
    good_sha, bad_sha = repo.commit(good, "GOOD"), repo.commit(bad, "BAD")
    if good_sha == bad_sha:
        raise BadInput(f"GOOD {good} and BAD {bad} are the same commit {good_sha[:12]}")
    if not repo.is_ancestor(good_sha, bad_sha):
        raise BadInput(f"GOOD {good} ({good_sha[:12]}) is not an ancestor of BAD {bad} ({bad_sha[:12]}): bisect "
                       f"searches the commits from GOOD to BAD")
    bisect = BisectDir(results_dir, bisect_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    header = Header(repo=str(repo.root), suite=relative, case=case, metric=metric, threshold=threshold,
                    good=good_sha, bad=bad_sha, commits=repo.path(good_sha, bad_sha), rounds=rounds,
                    extra_rounds=extra_rounds, repetitions=repetitions, seed=seed,
                    started_at=datetime.now(timezone.utc).isoformat())
    bisect.create(header)
    bench = Bench(repo, bisect, header)
    try:  # both ends must run the case before anything is measured
        for commit in (good_sha, bad_sha):
            bench.tree(commit)
    except Unmeasurable as exc:
        bench.close()
        shutil.rmtree(bisect.path, ignore_errors=True)
        raise BadInput(str(exc)) from None
    return repo, bisect


def resume(results_dir: Path, bisect_id: str) -> tuple[Repo, BisectDir]:
    bisect = BisectDir(results_dir, bisect_id)
    header = bisect.header()
    if bisect.result_path.exists():
        outcome = Outcome.model_validate_json(bisect.result_path.read_bytes())
        if outcome.outcome != "failed":  # a commit that could not measure may measure once its cause is fixed
            raise BadInput(f"bisect {bisect_id} has finished ({outcome.outcome}): {bisect.result_path}")
        bisect.result_path.unlink()
    return Repo(Path(header.repo)), bisect


def search(repo: Repo, bisect: BisectDir) -> ExitCode:
    """Run (or finish) the bisect; its answer is printed and written to result.json."""
    header = bisect.header()
    known = {step.commit: step for step in bisect.steps()}
    bench = Bench(repo, bisect, header)
    n = len(header.commits) - 1
    most = 1 + math.ceil(math.log2(n)) if n > 1 else 1
    print(f"bisect {bisect.bisect_id}: {n} commit(s) after GOOD {header.good[:12]} up to BAD {header.bad[:12]}; case "
          f"{header.case}, {header.metric}; {header.rounds} A/B rounds per step; at most {most} steps -> {bisect.path}",
          flush=True)
    if known:
        print(f"resuming: {len(known)} finished step(s) kept, not measured again", flush=True)
    steps: list[Step] = []

    def step(position: int) -> Step:
        commit = header.commits[position]
        if commit in known:
            done = known[commit]
            _show(done, len(steps) + 1, most, n, "measured before the resume")
        else:
            done = _measure(bench, bisect, header, position)
            _show(done, len(steps) + 1, most, n, "")
        steps.append(done)
        return done

    try:
        good, bad = 0, n
        ends = step(bad)
        if ends.verdict == "inconclusive":
            return _finish(bisect, bench, Outcome(outcome="inconclusive", steps=len(steps), message=(
                f"inconclusive: BAD against GOOD cannot be told apart from a {_percent(ends.threshold)} change "
                f"({_figures(ends)}); measure with more --rounds or on a quieter machine")), ExitCode.INCONCLUSIVE)
        if ends.verdict != "regression":
            return _finish(bisect, bench, Outcome(outcome="no change", steps=len(steps), message=(
                f"no change found: BAD is not slower than GOOD on {header.metric} ({_figures(ends)}: {ends.verdict}); "
                f"no commit is blamed")), ExitCode.OK)
        by_commit = {header.bad: ends}
        while bad - good > 1:
            middle = (good + bad) // 2
            judged = step(middle)
            if judged.verdict == "regression":
                bad = middle
                by_commit[judged.commit] = judged
            elif judged.verdict in ("unchanged", "improvement"):
                good = middle
            else:
                return _finish(bisect, bench, Outcome(outcome="inconclusive", steps=len(steps), message=(
                    f"inconclusive at commit {judged.commit[:12]} ({_figures(judged)}): the first bad commit is "
                    f"after {header.commits[good][:12]} and at or before {header.commits[bad][:12]}; not guessing")),
                    ExitCode.INCONCLUSIVE)
        first = by_commit[header.commits[bad]]
        return _finish(bisect, bench, Outcome(
            outcome="found", steps=len(steps), first_bad=first.commit, subject=first.subject,
            message=(f"first bad commit: {first.commit} {first.subject!r} ({bad} of {n} after GOOD): "
                     f"{_figures(first)}: regression; the last good one: {header.commits[good][:12]} "
                     f"{repo.subject(header.commits[good])!r}")), ExitCode.OK)
    except Unmeasurable as exc:
        return _finish(bisect, bench, Outcome(outcome="failed", steps=len(steps), message=(
            f"cannot measure: {exc}. The finished steps are kept in {bisect.steps_path}")), ExitCode.CASE_FAILED)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished steps are kept in {bisect.steps_path}; continue with: python -m bench bisect "
              f"--resume {bisect.bisect_id}", file=sys.stderr)
        raise


def _measure(bench: Bench, bisect: BisectDir, header: Header, position: int) -> Step:
    """Measure and judge one commit against GOOD, then append the step to the log."""
    commit = header.commits[position]
    shutil.rmtree(bisect.where("runs", commit[:12]), ignore_errors=True)  # a step cut short starts again
    candidate, good = bench.tree(commit), bench.tree(header.good)
    print(f"  measuring {commit[:12]} against GOOD {header.good[:12]}: {header.rounds} rounds", file=sys.stderr,
          flush=True)
    rounds, threshold = bench.rounds(candidate, good, 0, header.rounds)
    ratio, low, high, verdict, note = judge(rounds, header.metric, threshold)
    extended = verdict == "inconclusive" and header.extra_rounds > 0
    if extended:
        print(f"  inconclusive after {len(rounds)} rounds (ratio {_interval(ratio, low, high)}): "
              f"{header.extra_rounds} more rounds, once", file=sys.stderr, flush=True)
        more, _ = bench.rounds(candidate, good, len(rounds), header.extra_rounds)
        rounds += more
        ratio, low, high, verdict, note = judge(rounds, header.metric, threshold)
    step = Step(commit=commit, subject=bench.repo.subject(commit), position=position, endpoints=position ==
                len(header.commits) - 1, case_id=candidate.case_id, good_case_id=good.case_id, metric=header.metric,
                unit=METRICS[header.metric].unit, rounds=rounds, extended=extended, ratio=ratio, ci_low=low,
                ci_high=high, ci_level=LEVEL, threshold=threshold, verdict=verdict, note=note)
    bisect.append(step)
    if commit != header.good and commit != header.bad:  # the ends serve every step; the others are done
        bench.drop(commit)
    return step


def _show(step: Step, number: int, most: int, n: int, note: str) -> None:
    after = {"regression": "the change is at or before it", "unchanged": "the change is after it",
             "improvement": "not slower: the change is after it", "inconclusive": "cannot tell"}[step.verdict]
    which = "BAD" if step.endpoints else f"commit {step.position} of {n},"
    print(f"step {number}/{most}: {which} {step.commit[:12]} {step.subject!r}: {_figures(step)}: {step.verdict}"
          f"{'' if step.endpoints else ' -> ' + after}{f' ({note})' if note else ''}", flush=True)


def _interval(ratio: float | None, low: float | None, high: float | None) -> str:
    if ratio is None:
        return "none"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{ratio:.3f} [no CI]"


def _figures(step: Step) -> str:
    return (f"{step.metric} ratio {_interval(step.ratio, step.ci_low, step.ci_high)} (candidate / GOOD, "
            f"{_percent(step.ci_level)} CI) over {len(step.rounds)} rounds, threshold {_percent(step.threshold)}")


def _finish(bisect: BisectDir, bench: Bench, outcome: Outcome, code: ExitCode) -> ExitCode:
    bench.close()
    bisect.finish(outcome)
    print(outcome.message, flush=True)
    return code


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"
