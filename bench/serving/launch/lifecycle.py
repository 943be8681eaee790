"""A server's life in one case: start it, wait until it answers, watch it, stop it (always), restart it.

`RunningServer` starts a kind's `Launch` as a child process (bench/serving/launch/procs.py: own process
group, killed with the worker), polls its readiness URL until it answers 200 or the timeout, and
stops it on exit, also when the case fails or is interrupted. A server that exits or never gets ready
raises `ServerFailed` with the tail of its log. An external endpoint has no process: readiness is a
GET of its /models.
"""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from typing_extensions import Self

from bench.records import safe_files
from bench.serving.launch import procs
from bench.serving.launch.servers import Launch, ServerKind

POLL_S = 0.25


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with its log tail."""


class RunningServer:
    def __init__(self, kind: ServerKind, model_dir: str, log_path: Path, cpus: set[int] | None = None) -> None:
        self.kind, self.model_dir, self.log_path, self.cpus = kind, model_dir, log_path, cpus
        self.proc: subprocess.Popen | None = None
        self.launch: Launch | None = None
        self.ready_seconds: float | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float) -> Launch:
        """Start the server on a free port and wait until it is ready; the launch (URLs, version)."""
        self.launch = self.kind.prepare(self.model_dir, procs.free_port())
        started = time.monotonic()
        if self.launch.command:
            with safe_files.open_file(self.log_path, self.log_path.parent, "a") as log:
                log.write(f"$ {' '.join(self.launch.command)}\n")
            self.proc = procs.spawn(self.launch.command, self.log_path, self.launch.env, self.cpus)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self.launch

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.launch is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise ServerFailed(f"{self.kind.name} exited with code {code} before it was ready; "
                                   f"last lines of its log:\n{procs.tail(self.log_path)}")
            try:
                request = urllib.request.Request(self.launch.ready_url, headers=self.launch.headers)
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(POLL_S)
        raise ServerFailed(f"{self.kind.name} was not ready at {self.launch.ready_url} after {timeout_s:g} s "
                           f"({last}); last lines of its log:\n{procs.tail(self.log_path)}")

    def exit_code(self) -> int | None:
        """None while the server runs (or has no process); its exit code once it has exited."""
        return None if self.proc is None else self.proc.poll()

    def restart(self, timeout_s: float) -> Launch:
        self.stop()
        self.restarts += 1
        return self.start(timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
