"""Run the test suite N times with CPU hogs alongside and list every test that failed at least once.

    python benchmarks/flaky_hunt.py --runs 3 --hogs 1                 # the whole suite, 3 times, 1 hog
    python benchmarks/flaky_hunt.py --runs 1 --hogs 1 -- -k kill_resume  # after --: passed to pytest

Each run is `python -m pytest --junitxml=OUT/run-I.xml ...` from the repository root, with `--hogs` processes
that each keep one CPU busy (a Python busy loop) for the whole run: the load a CI machine shared with other jobs
puts on the suite. The JUnit XML of every run is kept in OUT (default: a new directory under the temp dir) with
`summary.json`. Printed: each run's wall time and counts; every test that failed or errored in any run, with the
runs it failed in and its wall time in each run; the 15 slowest tests (their longest time over the runs). The exit
code is 1 when a test failed in any run, else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


@dataclass
class Outcome:
    """One test in one run, as its JUnit XML says."""

    test: str  # pytest's node id, rebuilt from the XML's classname and name
    status: str  # passed, failed, error, skipped
    seconds: float
    message: str = ""


@dataclass
class Run:
    index: int
    hogs: int
    wall_seconds: float
    exit_code: int
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def node_id(case: ET.Element) -> str:
    """`tests/test_x.py::test_name[param]` from a JUnit testcase (classname `tests.test_x`, or with a class)."""
    parts = case.get("classname", "").split(".")
    module = [p for p in parts if not p[:1].isupper()]
    classes = [p for p in parts if p[:1].isupper()]
    return "::".join(["/".join(module) + ".py", *classes, case.get("name", "")])


def read_junit(path: Path) -> list[Outcome]:
    """Every testcase of a pytest JUnit XML file with its status, wall time and failure message."""
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                lines = (found.get("message") or found.text or "").strip().splitlines()
                message = lines[0][:200] if lines else ""
                break
        outcomes.append(Outcome(node_id(case), status, float(case.get("time", 0.0)), message))
    return outcomes


def start_hogs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        if hog.poll() is None:
            os.killpg(hog.pid, signal.SIGKILL)
        hog.wait()


def run_suite(index: int, hogs: int, out: Path, pytest_args: list[str]) -> Run:
    """One run of the suite with `hogs` busy loops alongside; its JUnit XML in `out`."""
    xml = out / f"run-{index}.xml"
    started_hogs = start_hogs(hogs)
    began = time.monotonic()
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", f"--junitxml={xml}", "-p", "no:cacheprovider",
                                *pytest_args], cwd=ROOT)
    finally:
        stop_hogs(started_hogs)
    run = Run(index, hogs, time.monotonic() - began, code)
    if xml.exists():
        run.outcomes = read_junit(xml)
    return run


def summarize(runs: list[Run]) -> dict:
    """The failed-at-least-once list (with the runs and each run's time) and the slowest tests over the runs."""
    times: dict[str, list[float]] = defaultdict(list)
    failed_in: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    for run in runs:
        for o in run.outcomes:
            times[o.test].append(o.seconds)
            if o.status in ("failed", "error"):
                failed_in[o.test].append((run.index, o.seconds, o.message))
    slowest = sorted(((max(t), test) for test, t in times.items()), reverse=True)[:15]
    return {
        "runs": [{"index": r.index, "hogs": r.hogs, "wall_seconds": round(r.wall_seconds, 1),
                  "pytest_exit": r.exit_code, **{s: r.count(s) for s in ("passed", "failed", "error", "skipped")}}
                 for r in runs],
        "failed_at_least_once": {test: [{"run": i, "seconds": round(s, 2), "message": m} for i, s, m in found]
                                 for test, found in sorted(failed_in.items())},
        "slowest": [{"test": test, "max_seconds": round(seconds, 2)} for seconds, test in slowest],
    }


def print_summary(summary: dict) -> None:
    print("\nruns:")
    for r in summary["runs"]:
        print(f"  run {r['index']} ({r['hogs']} hog(s)): {r['wall_seconds'] / 60:.1f} min, exit {r['pytest_exit']}: "
              f"{r['passed']} passed, {r['failed']} failed, {r['error']} errors, {r['skipped']} skipped")
    failed = summary["failed_at_least_once"]
    print(f"\nfailed at least once: {len(failed)}")
    for test, found in failed.items():
        print(f"  {test}")
        for f in found:
            print(f"    run {f['run']}: {f['seconds']:.1f} s: {f['message']}")
    print("\nslowest 15 (longest time over the runs):")
    for s in summary["slowest"]:
        print(f"  {s['max_seconds']:8.1f} s  {s['test']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="times the suite runs (default 3)")
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes alongside each run (default 1)")
    parser.add_argument("--out", type=Path, help="where the JUnit XML files and summary.json go")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (e.g. -k kill_resume)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="flaky-hunt-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for index in range(1, args.runs + 1):
        print(f"=== run {index} of {args.runs}, {args.hogs} hog(s) alongside", flush=True)
        runs.append(run_suite(index, args.hogs, out, args.pytest_args))
    summary = summarize(runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    print(f"\nJUnit XML and summary.json: {out}")
    return 1 if summary["failed_at_least_once"] else 0


if __name__ == "__main__":
    sys.exit(main())
