"""One bisect step: a commit's tree against the good commit's tree, in A/B rounds on this machine, judged by the gate.

**A commit's tree runs the case itself**: `python -m bench run SUITE --only CASE` in a fresh process whose working
directory is the commit's worktree and whose PYTHONPATH starts with it, so a repository that holds bench runs its own
bench of that commit, and a user's repository (its backend, `backend: pkg.module:Class`, or its suite) runs with
this bench importing the user's code from the commit's tree. The suite is the commit's own, with its `repetitions`
replaced for short rounds (min = max = `--repetitions`, one process per run: a round's runs are the fresh processes)
and written to the bisect's `suites/`; that changes the case's id hash, so the case is found in each commit's
suite (`python -m bench validate`) by its variant, model and workload (the id without its hash).

**A round** runs both sides once, in an order drawn per round (seeded); each run gives one number: the metric's
statistic as the gate takes it (`units_of`: the median of its samples, or total tokens / total time). Drift slower
than a round hits both sides alike and cancels in the round's ratio candidate / good. **The step's ratio** is the
median of the rounds' ratios with the distribution-free interval of that median (`paired_ratio`, the within-run
gate's paired-rounds estimate, with the rounds as its pairs); the gate's rule (`verdict`, with `rounds_shortfall`)
judges it against the threshold: from `--threshold`, else the good commit's suite (`regression:`).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import yaml

import bench
from bench.bisect.git import Repo
from bench.bisect.log import BisectDir, Header, Round
from bench.core.process import die_with_parent, log_tail
from bench.gate.compare import rule_from
from bench.gate.rule import Rule, rounds_shortfall, units_of, verdict
from bench.measure.stats import paired_ratio
from bench.metrics import METRICS
from bench.records import safe_files
from bench.records.rundir import Run, RunDir, load_run
from bench.records.schema import CaseRecord

LEVEL = Rule().ci_level  # the gate's default: 95 % intervals
# the distribution-free 95 % interval of a median needs 6 values (with 5, even the extremes cover only 94 %)
MIN_ROUNDS = 6
BENCH_ROOT = Path(bench.__file__).resolve().parent.parent  # where this bench (and its backends) is imported from


class Unmeasurable(Exception):
    """A commit whose tree cannot measure the case (no suite, an invalid suite, the case missing or failing)."""


@dataclass
class Tree:
    """A commit checked out, with its suite as bisect runs it and the case's id in that suite."""

    commit: str
    path: Path
    suite: Path
    case_id: str
    report_args: list[str]  # what keeps its runs from writing reports (older bench commits lack --no-report)


@dataclass
class Measured:
    value: float  # the metric's statistic over the run's repetitions
    record: CaseRecord
    run: Run


def case_key(case_id: str) -> str:
    """A case id without its hash: variant, model and workload, which stay when settings such as repetitions change."""
    return case_id.rsplit(".", 1)[0]


def case_task(case_id: str) -> str:
    """The task part of a case id: a workload (`b1-p64-n32`) for a latency case, else the task's name."""
    parts = case_id.rsplit(".", 2)
    return parts[1] if len(parts) == 3 else ""


class Bench:
    """Runs the case in commits' trees for one bisect."""

    def __init__(self, repo: Repo, bisect: BisectDir, header: Header) -> None:
        self.repo, self.bisect, self.header = repo, bisect, header
        self.trees: dict[str, Tree] = {}

    def tree(self, commit: str) -> Tree:
        """The commit's worktree, suite and case id (prepared once per commit)."""
        if commit not in self.trees:
            path = self.repo.add_tree(commit, self.bisect.where("trees", commit[:12]))
            try:
                suite = self._suite(commit, path)
                self.trees[commit] = Tree(commit, path, suite, self._case_id(commit, path, suite),
                                          self._report_args(commit, path))
            except Unmeasurable:
                self.repo.remove_tree(path)
                raise
        return self.trees[commit]

    def drop(self, commit: str) -> None:
        """Remove a commit's worktree (its step is done)."""
        tree = self.trees.pop(commit, None)
        if tree is not None:
            self.repo.remove_tree(tree.path)

    def close(self) -> None:
        """Remove every worktree (the run directories stay)."""
        for tree in self.trees.values():
            self.repo.remove_tree(tree.path)
        self.trees.clear()
        shutil.rmtree(self.bisect.where("trees"), ignore_errors=True)

    def _suite(self, commit: str, tree: Path) -> Path:
        source = tree / self.header.suite
        if not source.is_file():
            raise Unmeasurable(f"commit {commit[:12]} has no {self.header.suite}")
        try:
            data = yaml.safe_load(source.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise Unmeasurable(f"{self.header.suite} at commit {commit[:12]} is not YAML: {exc}") from None
        if not isinstance(data, dict):
            raise Unmeasurable(f"{self.header.suite} at commit {commit[:12]} is not a suite (a mapping)")
        repetitions = data.get("repetitions")
        repetitions = repetitions if isinstance(repetitions, dict) else {}
        data["repetitions"] = {**repetitions, "min": self.header.repetitions, "max": self.header.repetitions,
                               "processes": 1}
        where = self.bisect.where("suites", f"{commit[:12]}.yaml")
        text = f"# {self.header.suite} at {commit}, repetitions replaced by bench bisect\n" + \
            yaml.safe_dump(data, sort_keys=False)
        return safe_files.write_text(where, self.bisect.root, text).resolve()

    def _case_id(self, commit: str, tree: Path, suite: Path) -> str:
        done = self._bench(["validate", str(suite)], tree, self.bisect.where("logs", f"{commit[:12]}-validate.log"))
        if done.returncode != 0:
            raise Unmeasurable(f"{self.header.suite} at commit {commit[:12]} does not validate: "
                               f"{_last_line(done.stderr or done.stdout)}")
        ids = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ") and "." in line]
        matches = [i for i in ids if case_key(i) == case_key(self.header.case)]
        if len(matches) != 1:
            raise Unmeasurable(f"case {self.header.case} is not in {self.header.suite} at commit {commit[:12]} "
                               f"(its cases: {', '.join(case_key(i) + '.*' for i in ids) or 'none'})")
        return matches[0]

    def _report_args(self, commit: str, tree: Path) -> list[str]:
        """`--no-report` (a round's report would be thrown away: 40 % of a short run's time) where the tree's
        `bench run` has it: this bench's, or a bench commit's own since it was added; else reports go to a
        directory that is removed after each run."""
        if (tree / "bench" / "__main__.py").exists():
            done = self._bench(["run", "--help"], tree, self.bisect.where("logs", f"{commit[:12]}-run-help.log"))
            if "--no-report" not in done.stdout:
                return ["--reports-dir", str(self.bisect.where("reports"))]
        return ["--no-report"]

    def _bench(self, args: list[str], tree: Path, log: Path) -> subprocess.CompletedProcess:
        """`python -m bench ARGS` in the tree (its own bench first, else this one), output copied to `log`."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), *_this_bench(), env.get("PYTHONPATH")]))
        done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=tree, env=env, capture_output=True,
                              text=True, check=False, preexec_fn=die_with_parent())
        if done.returncode in (130, 143):  # Ctrl-C or SIGTERM reached the run as well: stop here too
            raise KeyboardInterrupt
        safe_files.write_text(log, self.bisect.root, f"$ bench {' '.join(args)}\n{done.stdout}{done.stderr}")
        return done

    def measure(self, tree: Tree, runs: Path, run_id: str) -> Measured:
        """Run the case once in `tree` into `runs/run_id`; the metric's statistic from its raw samples."""
        log = self.bisect.where("logs", f"{runs.name}-{run_id}.log")
        done = self._bench(["run", str(tree.suite), "--only", tree.case_id, "--run-id", run_id, "--results-dir",
                            str(runs), *tree.report_args], tree.path, log)
        shutil.rmtree(self.bisect.where("reports"), ignore_errors=True)  # derived from the run, which is kept
        where = f"commit {tree.commit[:12]}"
        if not RunDir(runs, run_id).exists():
            raise Unmeasurable(f"bench run failed at {where} (exit {done.returncode}): {_last_line(done.stderr)} "
                               f"(log: {log})")
        run = load_run(RunDir(runs, run_id))
        record = next((r for r in run.records if r.id == tree.case_id), None)
        if record is None or not record.ok:
            reason = record.reason if record is not None else f"no record (exit {done.returncode})"
            raise Unmeasurable(f"case {tree.case_id} did not finish ok at {where}: {reason} (log: {log}; "
                               f"{log_tail(run.dir.log_path(tree.case_id), 3)})")
        units = units_of(record, run.samples(tree.case_id), self.header.metric)
        if units is None:
            raise Unmeasurable(f"case {tree.case_id} at {where} has no raw samples of {self.header.metric}")
        return Measured(units.stat(), record, run)

    def rounds(self, candidate: Tree, good: Tree, first: int, count: int) -> tuple[list[Round], float]:
        """Rounds first .. first+count-1 of the step that measures `candidate` (the threshold: from the good side)."""
        runs = self.bisect.where("runs", candidate.commit[:12])
        out, threshold = [], self.header.threshold
        for number in range(first, first + count):
            order = ["good", "candidate"]
            random.Random(f"{self.header.seed}/{candidate.commit}/{number}").shuffle(order)
            values: dict[str, Measured] = {}
            for side in order:
                values[side] = self.measure(good if side == "good" else candidate, runs, f"r{number:02d}-{side}")
            if threshold is None:
                record = values["good"].record
                threshold = rule_from(values["good"].run).threshold_for(record, self.header.metric)
            good_value, candidate_value = values["good"].value, values["candidate"].value
            out.append(Round(order=order, good=good_value, candidate=candidate_value,  # type: ignore[arg-type]
                             ratio=candidate_value / good_value,
                             runs={side: str(runs.relative_to(self.bisect.path) / f"r{number:02d}-{side}")
                                   for side in order}))
            unit = METRICS[self.header.metric].unit
            print(f"    round {number + 1}: good {good_value:.4g} {unit}, candidate {candidate_value:.4g} {unit}, "
                  f"ratio {candidate_value / good_value:.3f} ({' then '.join(order)})", file=sys.stderr, flush=True)
        assert threshold is not None
        return out, threshold


def judge(rounds: list[Round], metric: str, threshold: float) -> tuple[float | None, float | None, float | None,
                                                                       str, str]:
    """(ratio, CI low, CI high, verdict, note) of the rounds: the gate's paired-rounds estimate and rule."""
    estimate = paired_ratio({(0, i): [r.candidate] for i, r in enumerate(rounds)},
                            {(0, i): [r.good] for i, r in enumerate(rounds)}, LEVEL)
    if estimate is None:
        return None, None, None, "inconclusive", "no round finished"
    ratio, low, high, pairs = estimate
    too_little = rounds_shortfall(pairs) or ("" if low is not None else
                                             f"too few rounds ({pairs}) for a {100 * LEVEL:g} % interval of their "
                                             f"median")
    return ratio, low, high, verdict(ratio, low, high, METRICS[metric], threshold, too_little), too_little


def _this_bench() -> list[str]:
    """What PYTHONPATH needs after a tree for `python -m bench` to be this bench where the tree holds none: its
    source checkout (an editable install may point elsewhere); nothing for one installed in site-packages, which
    is found anyway (and must not come before the standard library)."""
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return [] if BENCH_ROOT in installed else [str(BENCH_ROOT)]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
