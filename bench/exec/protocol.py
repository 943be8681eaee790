"""The protocol between the runner and a worker process (bench/run/worker.py).

A worker hands back one JSON file, written atomically before it exits (`WorkerResult`); a worker that
crashes, is killed or times out writes nothing, and the runner records the case from the exit status. The
runner turns a WorkerResult into the case's CaseRecord and RawSamples. A driven latency case is also paced
over two pipes (`Driver`, the worker's end; bench/run/interleave.py holds the other).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from bench.records.schema import CaseOutcome, RawSamples

DRIVE_FDS = "BENCH_DRIVE_FDS"  # "COMMANDS_FD,REPLIES_FD": the runner paces this latency case (interleave.py)
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


class Driver:
    """The runner's end of a driven latency case (bench/run/interleave.py): JSON lines over two pipes.

    The worker loads, warms up and says {"ready": ...}; then each {"measure": k} is answered with the stamps of
    k timed generations, until {"finish": true, "profile": bool} (profile: this is the case's last process, so
    it profiles a profiled case)."""

    def __init__(self, commands_fd: int, replies_fd: int) -> None:
        self.commands = os.fdopen(commands_fd, "r")
        self.replies = os.fdopen(replies_fd, "w")
        self.profile = False

    def reply(self, message: dict) -> None:
        self.replies.write(json.dumps(message) + "\n")
        self.replies.flush()

    def commands_until_finish(self) -> Iterator[dict]:
        for line in self.commands:
            command = json.loads(line)
            if command.get("finish"):
                self.profile = bool(command.get("profile"))
                return
            yield command
