"""The backend contract: what every adapter in backends/ implements, every method used by the harness.

The worker (bench/run/worker.py) drives a backend in this order:
1. `Backend(options, threads)`: options validated when the suite was loaded; nothing heavy yet.
2. `load(model_path)`: import the runtime (through `require`, so a missing package names its pip
   extra and the case is skipped), read or convert the weights, apply `threads`.
3. `tokenize(text)` once, then either
   - `generate(batch, new_tokens, on_token)` for latency: greedy-decode exactly `new_tokens` per
     sequence (EOS ignored), calling `on_token()` once per step as soon as that step's tokens exist
     on the host; returns the new token ids per sequence. The harness's clock timestamps the
     `on_token` calls: a backend never measures time itself; or
   - `token_logits(ids)` for perplexity: a float numpy array [len(ids), vocab] of next-token logits
     at every position of one sequence.
4. `describe()`: a `BackendDescription` of what actually ran (mechanism, dtype, device, threads,
   weight bytes, versions, and where the backend knows them its KV cache and attention kernel as typed
   fields; anything else free-form in `details`, which bench never reads); read after the task, so it
   reflects the loaded state.
5. optionally `native_profile(out_dir)` (a profiled case, after measuring), then `close()`:
   release what `load` took (models, sessions, contexts, engines).

Backends import from `bench.core` and nothing else of bench. Adding one: a module here with a
`Backend` subclass, and one line in `backends/__init__.py`'s REGISTRY.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from bench.core.deps import MissingDependency, NotSupportedHere, require
from bench.core.description import BackendDescription

TokenBatch = list[list[int]]

__all__ = ["Backend", "BackendDescription", "BackendOptions", "MissingDependency", "NotSupportedHere",
           "TokenBatch", "require"]


class BackendOptions(BaseModel):
    """Options every backend accepts. Subclasses add their own; unknown keys are rejected."""

    # strict: a suite's `compile: 1` is not `true`, "2" is not 2; finite: no `.inf` option values
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    device: str = "cpu"


class Backend(ABC):
    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs what this backend needs
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    # True: bench's profiler traces this backend with torch.profiler; False: with native_profile()
    profiles_with_torch: ClassVar[bool] = False

    def __init__(self, options: BackendOptions, threads: int = 1) -> None:
        self.options = options
        self.threads = threads  # the suite's thread setting; each backend applies it to its runtime
        self.model_path: str | None = None

    @property
    def device(self) -> str:
        """Where the harness's clock must read time: "cpu" (host clock) or "cuda[:N]" (CUDA events)."""
        return self.options.device

    @classmethod
    def prepare(cls, model_path: str, options: BackendOptions, log: Callable[[str], None]) -> None:
        """Build what `load` would otherwise build on first use (a converted model file), cached, so a machine
        builds it once before any case runs (bench/run/prepare.py), not inside a case's timed load. Optional."""

    @abstractmethod
    def load(self, model_path: str) -> None:
        """Load the model at `model_path` (a local directory or file, or a hub id) and apply `threads`."""

    @abstractmethod
    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        """Greedy-decode exactly `new_tokens` per sequence, calling on_token() after each step; the new ids."""

    @abstractmethod
    def token_logits(self, ids: list[int]) -> np.ndarray:
        """Float array [len(ids), vocab]: the logits of the token after each position of `ids`."""

    @abstractmethod
    def describe(self) -> BackendDescription:
        """What ran: mechanism, dtype, device, threads, weight bytes as stored, library versions."""

    @abstractmethod
    def close(self) -> None:
        """Release what load() took (model, session, context, engine); safe to call twice."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` with the model's own tokenizer, the same ids for every backend.

        The model dir's tokenizer.json through `tokenizers` (what transformers' fast tokenizer runs,
        without importing torch into a non-torch case), else transformers' AutoTokenizer."""
        tokenizer_json = Path(self.model_path or "") / "tokenizer.json"
        if self.model_path and tokenizer_json.is_file():
            tokenizers = require("tokenizers", "hf", self.name)
            return tokenizers.Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
        transformers = require("transformers", "hf", self.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @contextlib.contextmanager
    def native_profile(self, out_dir: Path) -> Iterator[dict]:
        """Profile the generations run inside the with-block with the runtime's own profiler.

        Optional. Yields a dict that is complete when the block exits: "profiler" (its name; "none"
        means no profiling and the block runs nothing), and any of "ops" ([{"name", "calls",
        "self_cpu_us"}], summarized by the harness), "phases_ms" ({phase: ms}), "counters",
        "reason". Files go in out_dir. Used only after the case was measured; leaves the backend usable.
        """
        yield {"profiler": "none", "reason": f"backend '{self.name}' has no profiler hook"}
