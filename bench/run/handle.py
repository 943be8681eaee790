"""A case's worker process as the runner holds it: started, talked to, waited on within the case's time, killed,
and its result read.

The single-case runner (bench/run/runner.py: one process per case), the interleaved scheduler
(bench/run/interleave.py: one paced process per variant and process set) and a reference's recomputation
(bench/run/reference.py) hold their workers through `WorkerProcess`. Every wait on a worker counts against the
case's `Budget` (its `timeout_s`, over all its waits and process sets), and a timeout is said one way
(`Budget.timeout`). A worker that dies, outlives the budget, reports a failure or writes a malformed result
ends in `WorkerGone`, which carries the result that goes into the case's record; the worker is dead by then.
"""
from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from pydantic import ValidationError

from bench.exec.protocol import (
    DRIVE_FDS,
    Failed,
    Finish,
    Measure,
    Measured,
    Ready,
    WorkerResult,
    decode_reply,
    encode,
)
from bench.records import safe_files
from bench.records.rundir import RunDir
from bench.records.schema import CaseSpec
from bench.run.spawn import exit_reason, spawn_worker

Expected = TypeVar("Expected", Ready, Measured)


class WorkerGone(Exception):
    """The worker died, timed out or reported a failure; `result` is what goes into the case's record."""

    def __init__(self, result: WorkerResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass
class Budget:
    """The time a case may take (its `timeout_s`; infinite: no limit), counted while the runner waits on its
    workers, every process set."""

    limit_s: float
    used_s: float = 0.0

    def left(self) -> float:
        return max(self.limit_s - self.used_s, 0.0)

    def wait_s(self) -> float | None:
        """How long the next wait may take (None: as long as it takes)."""
        return None if math.isinf(self.limit_s) else self.left()

    def timeout(self, step: str, waited_s: float, detail: str = "") -> str:
        """The one timeout message: the worker was still at `step` (`detail` says more) when the budget ran out."""
        if waited_s >= self.limit_s:  # the first wait took it all: the message a lone step always had
            return f"timeout: still {step} after {self.limit_s:g} s{detail}; killed"
        return (f"timeout: still {step} when the case had used its timeout_s ({self.limit_s:g} s, counted over "
                f"every process set){detail}; killed")


class WorkerProcess:
    """One worker process of a case; `driven`: paced over a pair of pipes (bench/exec/protocol.py)."""

    def __init__(self, proc: subprocess.Popen, result_file: Path, run: RunDir, budget: Budget,
                 commands: IO[str] | None = None, replies: IO[str] | None = None) -> None:
        self.proc, self.result_file, self.run, self.budget = proc, result_file, run, budget
        self._commands, self._replies = commands, replies

    @classmethod
    def start(cls, case: CaseSpec, run: RunDir, result_file: Path, log: IO, budget: Budget, *, driven: bool = False,
              env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> WorkerProcess:
        """Start `case`'s worker (bench/run/spawn.py: its interpreter, session, death with the runner), writing its
        output to `log` and its result to `result_file` (under the run's tmp/, made here, an old one removed).
        MissingEnv when the case's interpreter does not exist."""
        safe_files.makedirs(result_file.parent, run.root)  # no link on the way to the worker's result
        result_file.unlink(missing_ok=True)
        if not driven:
            return cls(spawn_worker(case, run, result_file, log, env, pass_fds), result_file, run, budget)
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            proc = spawn_worker(case, run, result_file, log, {**(env or {}), DRIVE_FDS: f"{commands_r},{replies_w}"},
                                (*pass_fds, commands_r, replies_w))
        except BaseException:  # MissingEnv (the caller records a skip), or a failed start
            os.close(commands_w)
            os.close(replies_r)
            raise
        finally:  # the worker's ends, now its own
            os.close(commands_r)
            os.close(replies_w)
        return cls(proc, result_file, run, budget, os.fdopen(commands_w, "w"), os.fdopen(replies_r, "r"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: Measure | Finish) -> None:
        """Write one command to a driven worker (WorkerGone if it is no longer there)."""
        assert self._commands is not None, "only a driven worker takes commands"
        try:
            self._commands.write(encode(command))
            self._commands.flush()
        except BrokenPipeError:
            raise self._died() from None

    def receive(self, expected: type[Expected]) -> Expected:
        """A driven worker's next message, waited for within the budget; WorkerGone if it times out, dies, reports
        its failure or says something else than `expected`."""
        assert self._replies is not None, "only a driven worker answers"
        began, wait = time.monotonic(), self.budget.wait_s()
        try:
            ready, _, _ = select.select([self._replies], [], [], wait)
        finally:
            self.budget.used_s += time.monotonic() - began
        if not ready:
            raise self.gone(self.budget.timeout("running", wait or 0.0, " without answering"))
        line = self._replies.readline()
        if not line:
            raise self._died()
        try:
            reply = decode_reply(line)
        except ValidationError as exc:
            raise self.gone(f"the worker's message is malformed: {exc}") from None
        if isinstance(reply, Failed):
            self.proc.wait()  # it writes the same result to its file, then exits
            self._close_pipes()
            raise WorkerGone(reply.result)
        if not isinstance(reply, expected):
            raise self.gone(f"the worker said {reply.kind!r} where {expected.model_fields['kind'].default!r} "
                            f"was due")
        return reply

    def finish(self, step: str = "running") -> WorkerResult:
        """Wait, within the budget, for the worker to exit (a driven one: after its commands are closed) and read
        its result: an ok result is returned; anything else (a timeout, no result, a failed or skipped one, a
        malformed file) is WorkerGone. Ctrl-C while waiting kills the worker."""
        self._close_pipes(replies=False)  # a driven worker's end of its commands: it writes its result and exits
        began, wait = time.monotonic(), self.budget.wait_s()
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            raise self.gone(self.budget.timeout(step, wait or 0.0)) from None
        except BaseException:  # Ctrl-C: take the worker down with us, record nothing for it
            self.kill()
            raise
        finally:
            self.budget.used_s += time.monotonic() - began
        self._close_pipes()
        result = self.result()
        if result is None:
            raise WorkerGone(WorkerResult(status="failed", reason=exit_reason(self.proc.returncode)))
        if result.status != "ok":
            raise WorkerGone(result)
        return result

    def result(self) -> WorkerResult | None:
        """The result file the worker wrote (None: it wrote none; a failed result if the file is malformed)."""
        try:
            data = safe_files.read_bytes(self.result_file, self.run.path)
        except FileNotFoundError:
            return None
        try:
            return WorkerResult.model_validate_json(data)
        except ValidationError as exc:
            return WorkerResult(status="failed", reason=f"the worker's result file is malformed: {exc}")

    def kill(self) -> None:
        """SIGKILL the worker's process group (its own children too) and reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._close_pipes()

    def gone(self, reason: str) -> WorkerGone:
        """Kill the worker; its end, for the record: the failure it wrote down if it did, else `reason`."""
        self.kill()
        written = self.result()
        return WorkerGone(written if written is not None and written.status != "ok" else
                          WorkerResult(status="failed", reason=reason))

    def _died(self) -> WorkerGone:
        self.proc.wait()
        return self.gone(exit_reason(self.proc.returncode))

    def _close_pipes(self, replies: bool = True) -> None:
        with contextlib.suppress(BrokenPipeError):  # nothing is left unwritten (`send` flushes): nothing lost
            if self._commands is not None:
                self._commands.close()
        if replies and self._replies is not None:
            self._replies.close()
