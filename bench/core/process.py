"""Child processes that die with their parent (a killed runner must not leave a case or a server running),
work done in a child so that Ctrl-C stops it at once, the tail of their logs, and a process's peak RSS as the
kernel keeps it (VmHWM).

`die_with_parent()` is a `preexec_fn` for subprocess: on Linux it asks the kernel (prctl
PR_SET_PDEATHSIG) to SIGKILL the child the moment the process that started it dies, even by kill -9,
and closes the race where the parent died between fork and that call. Elsewhere it does nothing.

`call_in_child(fn, ...)` runs `fn` in a forked child and returns what it returns. Python runs a signal
handler only between bytecodes of the main thread, so a Ctrl-C that lands while the main thread is inside a
long native call (a tokenizer trained in Rust, a large encode, an ONNX export: seconds each, more on a busy
machine) is acted on only when that call returns; and an interpreter that has imported torch and
transformers takes seconds more to finalize. Waiting on a child instead, the parent handles Ctrl-C at once:
it asks the child to stop (SIGTERM, so the child's `finally` blocks remove what it was building), gives it
`grace_s`, then kills its process group.

`forget_unhandled_interrupt()`: CPython remembers a KeyboardInterrupt that escaped code run from a string
(`exec`/`eval` of source text, as `dataclasses` and `namedtuple` do while a module is imported) and, at exit,
kills the process with SIGINT whatever exit code it asked for; a command that handled the interrupt calls
this so its own exit code (130) stands.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

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


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def call_in_child(fn: Callable[..., T], *args: Any, grace_s: float = 0.3) -> T:
    """`fn(*args)` run in a forked child in its own session that dies with this process; its return value (or the
    exception it raised) comes back pickled. On any exception here (Ctrl-C, SIGTERM turned into one) the child is
    stopped (SIGTERM, `grace_s` to clean up, then SIGKILL to its process group) before the exception goes on.
    Where fork is missing, `fn` runs here."""
    if not hasattr(os, "fork"):
        return fn(*args)
    preexec = die_with_parent()
    readable, writable = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # what is buffered here must not be written twice
        stream.flush()
    # no Ctrl-C between fork and the try blocks below: the child must never run the caller's code
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(readable)
        os.close(writable)
        raise
    if pid == 0:
        _child(fn, args, preexec, readable, writable, blocked)
    try:
        os.close(writable)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        with os.fdopen(readable, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _stop_child(pid, grace_s)
        raise
    if not data:  # killed, or died without a word
        raise ChildError(f"the child process that ran {fn.__name__} stopped ({_status_text(status)}) without a "
                         f"result")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


class ChildError(RuntimeError):
    """The child of call_in_child died without returning (killed, or its result could not be pickled)."""


def _child(fn: Callable, args: tuple, preexec: Callable[[], None] | None, readable: int, writable: int,
           blocked: set) -> NoReturn:
    code = 0
    try:
        os.close(readable)
        os.setsid()  # a terminal's Ctrl-C reaches the parent, which stops this child
        if preexec is not None:
            preexec()
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGINT, _raise_interrupt)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            payload = pickle.dumps((True, fn(*args)))
        except KeyboardInterrupt:  # stopped by the parent: its `finally` blocks have run; nothing to say
            code = 130
            payload = b""
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                payload = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text instead
                payload = pickle.dumps((False, ChildError(f"{type(exc).__name__}: {exc}")))
        with os.fdopen(writable, "wb") as pipe:
            pipe.write(payload)
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the parent's code
        code = code or 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - exiting anyway
                pass
        os._exit(code)  # no interpreter finalization: seconds with torch loaded, and nothing of the parent's


def _stop_child(pid: int, grace_s: float) -> None:
    """SIGTERM the child, wait up to `grace_s` for it, then SIGKILL its process group; reap it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
            time.sleep(0.01)
        for kill in (os.killpg, os.kill):  # its group (what it started too), and itself if it had no group yet
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped
        pass


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def forget_unhandled_interrupt() -> None:
    """Clear CPython's record of a KeyboardInterrupt that escaped code run from a string (see the module's
    docstring), so the exit code the program returns is the one the process exits with."""
    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, ValueError):  # not CPython, or a version without it
        pass


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
