"""A model-free backend for known-answer tests of the harness: exact injected delays and failures.

Each token step waits exactly `token_delay_s` (a sleep, then a busy-wait on perf_counter, so the delay is
known to microseconds), the prompt step additionally `prefill_delay_s`; or, with `token_work`, does a fixed
amount of CPU work per token (a loop of that many iterations), which a busy machine slows down in
proportion, as it does a model's compute: 10 % more work is 10 % more time however loaded the CPU is.
`model_token_delay_s` gives a model (by name) its own token delay, for studies that compare models.
Logits come from a fixed bigram table, so perplexity has a closed form. `fail` makes the case crash,
hang, raise or run out of memory, to check that the runner records it and goes on. Suites name it by import path:
`backend: tests.known_answer_backend:KnownAnswerBackend`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from backends.base import Backend, BackendDescription, BackendOptions, TokenBatch, require

VOCAB = 8


def bigram_logits() -> np.ndarray:
    """logits[prev, next]: a fixed, non-uniform table."""
    return np.log(np.arange(1, VOCAB * VOCAB + 1, dtype=np.float64).reshape(VOCAB, VOCAB) % 7 + 1)


def work(iterations: int) -> int:
    """A fixed amount of CPU work (the same instructions every time)."""
    total = 0
    for i in range(iterations):
        total += i
    return total


SPIN_NS = 300_000  # the last 0.3 ms of a wait is a busy-wait on perf_counter (sleep alone wakes up late)


def wait_ns(duration_ns: int) -> None:
    """Return `duration_ns` after the call, to microseconds: sleep, then busy-wait the last SPIN_NS. A process that
    sleeps is not runnable, so on a loaded machine the scheduler wakes it promptly, where one that busy-waits the
    whole delay uses up its time slice and is preempted for milliseconds past its deadline."""
    deadline = time.perf_counter_ns() + duration_ns
    if duration_ns > SPIN_NS:
        time.sleep((duration_ns - SPIN_NS) / 1e9)
    while time.perf_counter_ns() < deadline:
        pass


class KnownAnswerOptions(BackendOptions):
    token_delay_s: float = 0.01
    # per model (the last part of its name or path): its own token delay instead of token_delay_s
    model_token_delay_s: dict[str, float] = Field(default_factory=dict)
    prefill_delay_s: float = 0.0
    token_work: int = 0  # if > 0: loop iterations of CPU work per token instead of the timed wait
    fail: Literal["none", "abort", "raise", "hang", "memory", "missing-package"] = "none"
    fail_marker: str | None = None  # fail only while this file does not exist (to test retries)


class KnownAnswerBackend(Backend):
    name = "known-answer"
    extra = "test"
    Options = KnownAnswerOptions

    def load(self, model_path: str) -> None:
        self.model_path = model_path
        self.token_delay_s = self.options.model_token_delay_s.get(Path(model_path).name, self.options.token_delay_s)
        fail = self.options.fail
        if self.options.fail_marker and os.path.exists(self.options.fail_marker):
            fail = "none"
        if fail == "abort":
            os.abort()
        if fail == "raise":
            raise RuntimeError("injected failure")
        if fail == "hang":
            time.sleep(3600)
        if fail == "memory":
            raise MemoryError("injected allocation failure")
        if fail == "missing-package":
            require("package_that_does_not_exist", "known-answer", self.name)

    def tokenize(self, text: str) -> list[int]:
        return [ord(ch) % VOCAB for ch in text]

    def prefill(self, batch: TokenBatch) -> None:
        wait_ns(int(self.options.prefill_delay_s * 1e9))

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        self.prefill(batch)
        for _ in range(new_tokens):
            if self.options.token_work:
                work(self.options.token_work)
            else:
                wait_ns(int(self.token_delay_s * 1e9))
            on_token()
        return [[0] * new_tokens for _ in batch]

    def token_logits(self, ids: list[int]) -> np.ndarray:
        return bigram_logits()[ids]

    def describe(self) -> BackendDescription:
        return BackendDescription(mechanism="known-answer test backend (busy-wait delays, bigram logits)",
                                  dtype="float64", device="cpu", threads=1, model_size_bytes=VOCAB * VOCAB * 8)

    def close(self) -> None:
        pass
