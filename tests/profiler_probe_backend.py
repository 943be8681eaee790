"""hf-eager that logs, for each generate call, whether torch's profiler was recording during it.

Lets a test prove that profiling happens only after a case's timed repetitions (the log line is
written after the last on_token, so the timed steps are those of hf-eager).
Suites name it by import path: `backend: tests.profiler_probe_backend:ProfilerProbe`.
"""
from __future__ import annotations

from collections.abc import Callable

from backends.base import TokenBatch
from backends.hf.eager import HFEager, HFOptions


class ProbeOptions(HFOptions):
    probe_log: str  # one line per generate call: "profiled" or "measured"


class ProfilerProbe(HFEager):
    name = "profiler-probe"
    Options = ProbeOptions

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        profiled = self._torch.autograd._profiler_enabled()
        out = super().generate(batch, new_tokens, on_token)
        with open(self.options.probe_log, "a") as log:
            log.write("profiled\n" if profiled else "measured\n")
        return out
