"""The backend protocol: what every adapter in backends/ implements, and the helpers they share.

A backend loads one model and then answers four questions, all on token ids the harness chose:
- `prefill(batch)`: run the prompts through the model (one forward, cache filled, no sampling);
- `generate(batch, n, on_token)`: greedy-decode exactly n new tokens per sequence (EOS ignored),
  calling `on_token()` once per step as soon as that step's tokens exist; the harness's clock
  timestamps those calls, so no backend measures time itself;
- `token_logits(ids)`: next-token logits at every position of one sequence ([len(ids), vocab]);
- `describe()`: what actually ran (mechanism, dtype, device, library versions, weight bytes).

Heavy libraries are imported inside `load` through `require`, never at module import time, so the
registry and the CLI stay fast and a missing package becomes a one-line message naming the extra.
"""
from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

TokenBatch = list[list[int]]


class MissingDependency(ImportError):
    """A backend's optional package is absent; the message names the pip extra to install."""


def require(module: str, extra: str, backend: str):
    """Import `module` or raise MissingDependency naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"backend '{backend}' needs the Python package '{module.split('.')[0]}' ({exc.msg}): "
            f"pip install 'bench[{extra}]'"
        ) from exc


class BackendOptions(BaseModel):
    """Options every backend accepts. Subclasses add their own; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "cpu"


class Backend(ABC):
    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs what this backend needs
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    # True: bench.profiling traces this backend with torch.profiler; False: with native_profile()
    profiles_with_torch: ClassVar[bool] = False

    def __init__(self, options: BackendOptions, threads: int = 1) -> None:
        self.options = options
        self.threads = threads  # the suite's thread setting; each backend applies it to its runtime
        self.model_path: str | None = None

    @property
    def device(self) -> str:
        return self.options.device

    @abstractmethod
    def load(self, model_path: str) -> None: ...

    @abstractmethod
    def prefill(self, batch: TokenBatch) -> None: ...

    @abstractmethod
    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch: ...

    @abstractmethod
    def token_logits(self, ids: list[int]):
        """numpy float array [len(ids), vocab]: logits for the token after each position."""

    @abstractmethod
    def describe(self) -> dict: ...

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
        "self_cpu_us"}], summarized by bench.profiling), "phases_ms" ({phase: ms}), "counters",
        "reason". Files go in out_dir. Used only after the case was measured.
        """
        yield {"profiler": "none", "reason": f"backend '{self.name}' has no profiler hook"}

    def close(self) -> None:
        """Release what load() took; the case's process exits right after anyway."""
