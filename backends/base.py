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

import importlib
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

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
        """Token ids of `text` with the model's own tokenizer (the HF tokenizer of the model dir)."""
        transformers = require("transformers", "hf", self.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def close(self) -> None:
        """Release what load() took; the case's process exits right after anyway."""
