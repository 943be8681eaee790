"""The protocol between the runner and a worker process (bench/run/worker.py): its result file and its pipe messages.

A worker hands back one JSON file, written atomically before it exits (`WorkerResult`); a worker that
crashes, is killed or times out writes nothing, and the runner records the case from the exit status. The
runner turns a WorkerResult into the case's CaseRecord and RawSamples.

A driven latency case is also paced over two pipes, one typed message per JSON line, encoded and decoded here
and nowhere else: the runner sends `Measure` (time k generations) and at the end `Finish`; the worker answers
`Ready` once loaded and warmed up, `Measured` (the stamps of the k generations) for each `Measure`, and `Failed`
(its result) when its task raised. `Driver` is the worker's end; bench/run/handle.py (`WorkerProcess`) holds
the runner's.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from bench.records.schema import CaseOutcome, RawSamples

DRIVE_FDS = "BENCH_DRIVE_FDS"  # "COMMANDS_FD,REPLIES_FD": the runner paces this latency case (bench/run/interleave.py)
RESULT_UNWRITABLE = 74  # EX_IOERR: a worker's exit code when it could not write its result file (spawn.exit_reason)


class WorkerResult(CaseOutcome):
    """A case's outcome as its worker hands it over, with the raw samples (which go to samples/<id>.json) and
    what the runner needs beyond the record: the device's peak memory bandwidth for MBU (bench/measure/bandwidth.py),
    which a driven latency case can compute only once the runner has every process's samples."""

    samples: RawSamples | None = None
    peak_bandwidth_gbs: float | None = None
    peak_bandwidth_source: str | None = None  # where the peak comes from, or why it is unknown

    def outcome(self) -> dict:
        """The fields a CaseRecord keeps."""
        return self.model_dump(exclude={"samples", "peak_bandwidth_gbs", "peak_bandwidth_source"})


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measure(_Message):
    """Runner to worker: time `repetitions` generations now and answer with their stamps (`Measured`)."""

    kind: Literal["measure"] = "measure"
    repetitions: int = Field(ge=1)


class Finish(_Message):
    """Runner to worker: nothing more to measure; `profile`: this is the case's last process, which measures
    energy and profiles a profiled case before the worker writes its result and exits."""

    kind: Literal["finish"] = "finish"
    profile: bool


class Ready(_Message):
    """Worker to runner: loaded and warmed up, waiting for `Measure`."""

    kind: Literal["ready"] = "ready"


class Measured(_Message):
    """Worker to runner: the clock's stamps of each timed generation (bench/measure/latency.py
    `one_generation`), and the wall seconds the worker spent on them."""

    kind: Literal["measured"] = "measured"
    stamps: list[list[int]]
    seconds: float


class Failed(_Message):
    """Worker to runner: its task raised; `result` is the failed (or skipped) result it also writes to its file."""

    kind: Literal["failed"] = "failed"
    result: WorkerResult


Command = Annotated[Measure | Finish, Field(discriminator="kind")]
Reply = Annotated[Ready | Measured | Failed, Field(discriminator="kind")]
_COMMAND: TypeAdapter[Measure | Finish] = TypeAdapter(Command)
_REPLY: TypeAdapter[Ready | Measured | Failed] = TypeAdapter(Reply)


def encode(message: Measure | Finish | Ready | Measured | Failed) -> str:
    """One message as the line written to its pipe."""
    return message.model_dump_json() + "\n"


def decode_command(line: str) -> Measure | Finish:
    """A line the runner wrote (pydantic's ValidationError if it is not a command)."""
    return _COMMAND.validate_json(line)


def decode_reply(line: str) -> Ready | Measured | Failed:
    """A line the worker wrote (pydantic's ValidationError if it is not a reply)."""
    return _REPLY.validate_json(line)


class Driver:
    """The worker's end of a driven latency case: it reads the runner's commands and answers them (see above)."""

    def __init__(self, commands_fd: int, replies_fd: int) -> None:
        self.commands = os.fdopen(commands_fd, "r")
        self.replies = os.fdopen(replies_fd, "w")
        self.profile = False  # set by Finish: this process profiles the case

    @classmethod
    def from_environment(cls) -> Driver | None:
        """The driver of a worker the runner started with DRIVE_FDS set; None for a case it does not pace."""
        fds = os.environ.get(DRIVE_FDS)
        if not fds:
            return None
        commands_fd, replies_fd = map(int, fds.split(","))
        return cls(commands_fd, replies_fd)

    def send(self, reply: Ready | Measured | Failed) -> None:
        self.replies.write(encode(reply))
        self.replies.flush()

    def measure_commands(self) -> Iterator[Measure]:
        """Each `Measure` the runner sends, until its `Finish` (which sets `profile`) or a closed pipe."""
        for line in self.commands:
            command = decode_command(line)
            if isinstance(command, Finish):
                self.profile = command.profile
                return
            yield command
