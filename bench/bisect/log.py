"""A bisect's directory, `<results-dir>/bisect-<id>/`: what it was asked, every finished step, and its answer.

- `bisect.json` (`Header`): the arguments, both commits, the commits between them and the settings of a round,
  written before the first measurement; `--resume ID` reads it and asks for nothing else.
- `steps.jsonl` (`Step` per line): a step is appended, with fsync, once it is judged (its rounds, ratio, interval
  and verdict); a step killed before that leaves no line and runs again. A last line cut short by a kill is
  ignored.
- `result.json` (`Outcome`): the answer, written at the end. `lock`: held while a process measures.
- `runs/<commit>/`: the run directories of every round (raw samples kept), `logs/` their output, `suites/` the
  suite of each commit as run (its repetitions replaced), `trees/` the commits' worktrees while the bisect runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bench.errors import BadInput
from bench.records import safe_files

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,100}$")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Header(_Record):
    """What a bisect was asked, fixed when it starts."""

    repo: str  # the repository's root
    suite: str  # the suite's path from the repository's root
    case: str  # the case id as given (its hash may differ at other commits: matched by variant, model, workload)
    metric: str
    threshold: float | None  # --threshold; None: the suite's regression settings at the good commit
    good: str
    bad: str
    commits: list[str]  # good first, bad last (first-parent line)
    rounds: int  # A/B rounds per step
    extra_rounds: int  # rounds added once to a step that came out inconclusive
    repetitions: int  # measured repetitions per run (suite's repetitions.min and max)
    seed: int  # the order of the two sides in each round
    started_at: str


class Round(_Record):
    """One A/B round: a run of each side, in `order`; the metric's statistic of each run, as the gate takes it."""

    order: list[Literal["good", "candidate"]]
    good: float
    candidate: float
    ratio: float  # candidate / good
    runs: dict[str, str]  # side -> run directory, relative to the bisect's directory


class Step(_Record):
    commit: str
    subject: str
    position: int  # index in Header.commits (0: good)
    endpoints: bool  # the first step: the bad commit, to see that there is a change to find
    case_id: str  # the case's id at this commit (the good commit's id is in `good_case_id`)
    good_case_id: str
    metric: str
    unit: str
    rounds: list[Round]
    extended: bool  # inconclusive after `Header.rounds` rounds, so measured again with the extra rounds
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    ci_level: float
    threshold: float
    verdict: str  # regression, improvement, unchanged or inconclusive (bench/gate/rule.py)
    note: str = ""


class Outcome(_Record):
    outcome: Literal["found", "no change", "inconclusive", "failed"]
    message: str
    first_bad: str | None = None
    subject: str | None = None
    steps: int  # measured steps, the endpoints included


class BisectDir:
    def __init__(self, results_dir: Path, bisect_id: str) -> None:
        if not NAME.match(bisect_id):
            raise BadInput(f"bisect id {bisect_id!r}: use letters, digits and . _ = + - (it names a directory)")
        self.root = Path(results_dir)
        self.bisect_id = bisect_id
        self.path = self.root / f"bisect-{bisect_id}"

    @property
    def header_path(self) -> Path:
        return self.path / "bisect.json"

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.jsonl"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    def exists(self) -> bool:
        return self.header_path.exists()

    def create(self, header: Header) -> None:
        if self.path.exists():
            raise BadInput(f"{self.path} already exists: continue it with --resume {self.bisect_id}, or give a new "
                           f"--id")
        safe_files.makedirs(self.path, self.root)
        safe_files.write_json(self.header_path, self.root, header.model_dump(mode="json"))

    def header(self) -> Header:
        if not self.exists():
            raise BadInput(f"--resume {self.bisect_id}: no bisect {self.header_path}")
        try:
            return Header.model_validate_json(self.header_path.read_bytes())
        except ValidationError as exc:
            raise BadInput(f"{self.header_path}: not a bisect header ({exc.errors()[0]['msg']})") from None

    def steps(self) -> list[Step]:
        """The finished steps, in order; a last line cut short by a kill is left out."""
        if not self.steps_path.exists():
            return []
        steps = []
        lines = self.steps_path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                steps.append(Step.model_validate_json(line))
            except ValidationError:
                if number == len(lines):  # no newline after it: the write was cut short
                    break
                raise BadInput(f"{self.steps_path}:{number}: not a bisect step") from None
        return steps

    def append(self, step: Step) -> None:
        """One line with write(2) on an O_APPEND descriptor, then fsync: a kill leaves whole steps."""
        data = (step.model_dump_json() + "\n").encode()
        fd = safe_files.open_fd(self.steps_path, self.root, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self, outcome: Outcome) -> None:
        safe_files.write_json(self.result_path, self.root, outcome.model_dump(mode="json"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while the bisect measures: a second process on the same bisect is refused."""
        fd = safe_files.open_fd(self.path / "lock", self.root, os.O_WRONLY | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadInput(f"bisect {self.bisect_id} is running in another process") from None
            yield
        finally:
            os.close(fd)

    def where(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)
