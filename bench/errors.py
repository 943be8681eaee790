"""The one exit-code table and the one way to report bad input.

Any module raises `BadInput` (or a subclass) with a message that names the file, line or field at
fault; the CLI prints `error: <message>` and exits with BAD_INPUT, never with a traceback. A bug in
bench itself exits with INTERNAL_ERROR and its traceback, so CI never mistakes a crash for a verdict.
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # run: every case ok or skipped; compare: no regression within the thresholds
    REGRESSION = 1  # compare: a regression was found (and confirmed, when confirmation is asked for)
    BAD_INPUT = 2  # a malformed suite, an unknown run, a bad option: nothing was run
    CASE_FAILED = 3  # run: some case failed; compare: a failed case, or no comparable data
    INCONCLUSIVE = 4  # compare: the data cannot tell whether a change exceeds its threshold
    INTERNAL_ERROR = 70  # a bug in bench (EX_SOFTWARE): the traceback is printed
    INTERRUPTED = 130  # Ctrl-C: finished cases are kept; resume with --resume
    TERMINATED = 143  # SIGTERM (128 + 15): as INTERRUPTED, finished cases kept, resume with --resume


class BadInput(Exception):
    """Input bench cannot use; str() is the one-line message shown after `error: ` (exit code 2)."""
