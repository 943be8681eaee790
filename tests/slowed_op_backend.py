"""hf-eager with one operator made slower on demand: before each token it sorts a tensor whose size a file names.

A pair of runs of the same suite (same options, so the same case ids) then differs in one operator's cost only:
write a small size into the file for the baseline, a large one for the current run, and `aten::sort` is what moved
(tests/test_attribution.py). The file is read when the backend loads.
Suites name it by import path: `backend: tests.slowed_op_backend:SlowedOp`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.base import TokenBatch
from backends.hf.eager import HFEager, HFOptions


class SlowedOptions(HFOptions):
    sort_size_file: str  # holds the number of elements sorted before each token


class SlowedOp(HFEager):
    name = "slowed-op"
    Options = SlowedOptions

    def load(self, model_path: str) -> None:
        super().load(model_path)
        size = int(Path(self.options.sort_size_file).read_text())
        self._unsorted = self._torch.arange(size, 0, -1, dtype=self._torch.float32)

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        def sorted_then(on_token=on_token) -> None:
            self._torch.sort(self._unsorted)
            on_token()

        return super().generate(batch, new_tokens, sorted_then)
