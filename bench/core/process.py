"""Child processes that die with their parent: a killed runner must not leave a case (or a server) running.

`die_with_parent()` is a `preexec_fn` for subprocess: on Linux it asks the kernel (prctl
PR_SET_PDEATHSIG) to SIGKILL the child the moment the process that started it dies, even by kill -9,
and closes the race where the parent died between fork and that call. Elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child die with this process (Linux), or None where that is not possible."""
    if _libc is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec: async-signal-safe calls only
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
