"""The one timing primitive every backend is measured with.

A `Clock` is started, then marked each time a backend reports a new token (or finishes any timed
step). `stamps_ns()` returns the marks as nanoseconds since the start.

- On the CPU marks are `time.perf_counter_ns()` readings taken at the call.
- Where the backend runs on a CUDA device through torch, marks are CUDA events recorded on the
  current stream; `stamps_ns()` synchronizes once and converts event intervals. Marking never forces
  a device sync inside the timed loop, so the clock does not slow down what it measures.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """Wall clock on the host: perf_counter_ns."""

    device = "cpu"

    def __init__(self) -> None:
        self._start = 0
        self._marks: list[int] = []

    def start(self) -> None:
        self._marks = []
        self._start = time.perf_counter_ns()

    def mark(self) -> None:
        self._marks.append(time.perf_counter_ns())

    def stamps_ns(self) -> list[int]:
        return [m - self._start for m in self._marks]

    def time_ns(self, fn: Callable[[], object]) -> tuple[int, object]:
        """Run fn once and return (elapsed ns, its result)."""
        self.start()
        result = fn()
        self.mark()
        return self.stamps_ns()[-1], result


class CudaClock(Clock):
    """CUDA events on the current stream; synchronizes only when the stamps are read."""

    device = "cuda"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._start_event = None
        self._events: list = []

    def _event(self):
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self._events = []
        self._start_event = self._event()

    def mark(self) -> None:
        self._events.append(self._event())

    def stamps_ns(self) -> list[int]:
        if self._start_event is None:
            raise RuntimeError("CudaClock.stamps_ns() before start()")
        self._torch.cuda.synchronize()
        return [round(self._start_event.elapsed_time(e) * 1e6) for e in self._events]


def make_clock(device: str) -> Clock:
    """The clock for a backend running on `device` ("cpu", "cuda", "cuda:0", ...)."""
    return CudaClock() if device.startswith("cuda") else Clock()
