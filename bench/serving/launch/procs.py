"""Child processes that never outlive bench: a process group, PR_SET_PDEATHSIG, CPU placement, free ports.

A server is started in its own process group (so stopping it stops everything it started) with
`prctl(PR_SET_PDEATHSIG, SIGKILL)` set between fork and exec: if the worker that started it dies for
any reason (kill -9, the runner's timeout), the kernel kills the server too. `stop` sends SIGTERM to
the group, waits, then SIGKILL. `placement` splits this process's CPUs between server and client.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from bench.core.process import die_with_parent, log_tail
from bench.records import safe_files


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """Start `command` in its own process group, output to `log_path`, killed when this process dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with safe_files.open_file(log_path, log_path.parent, "ab") as log:  # a link at the log is refused
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=die_with_parent(cpus))  # noqa: PLW1509


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


tail = log_tail
