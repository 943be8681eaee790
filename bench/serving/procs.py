"""Child processes that never outlive bench: a process group, PR_SET_PDEATHSIG, CPU placement, free ports.

A server is started in its own process group (so stopping it stops everything it started) with
`prctl(PR_SET_PDEATHSIG, SIGKILL)` set between fork and exec: if the worker that started it dies for
any reason (kill -9, the runner's timeout), the kernel kills the server too. `stop` sends SIGTERM to
the group, waits, then SIGKILL. `placement` splits this process's CPUs between server and client.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_setup(parent: int, cpus: set[int] | None) -> Callable[[], None]:
    """The preexec function: die with the parent, and run on `cpus` (inherited by the child's own children)."""
    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would stop us
            os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


def spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """Start `command` in its own process group, output to `log_path`, killed when this process dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True,
                                preexec_fn=_child_setup(os.getpid(), cpus))  # noqa: PLW1509 - prctl runs in the child


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int | None:
    """Stop the process group of `proc`: SIGTERM, then SIGKILL after `grace_s`; its exit code."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def placement(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(server CPUs, client CPUs, how they run): the client gets one CPU, the server the rest, when >= 2."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None, "not pinned: os.sched_setaffinity is not available here"
    if not pin:
        return None, None, f"not pinned (serving.pin: false): server and client share CPUs {cpus}"
    if len(cpus) < 2:
        return None, None, f"not pinned: only CPU {cpus} is available, server and client share it"
    return set(cpus[:-1]), {cpus[-1]}, f"pinned: server on CPUs {cpus[:-1]}, client on CPU {cpus[-1]}"


def tail(path: Path | None, lines: int = 25) -> str:
    """The last lines of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
