"""Child processes that die with their parent (a killed runner must not leave a case or a server running),
the tail of their logs, and a process's peak RSS as the kernel keeps it (VmHWM).

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
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(cpus: set[int] | None = None) -> Callable[[], None] | None:
    """A preexec_fn that makes the child die with this process (Linux) and, given `cpus`, run on them (its own
    children inherit the placement); None where neither is possible."""
    if _libc is None:
        return (lambda: os.sched_setaffinity(0, cpus)) if cpus and hasattr(os, "sched_setaffinity") else None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec: no lock is taken
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return preexec


def log_tail(path: Path | None, lines: int = 25) -> str:
    """The last lines of a process's log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def vm_hwm_bytes(pid: int | str = "self") -> int | None:
    """The kernel's peak RSS of a process since its exec (VmHWM), or None where /proc has no such field."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None
