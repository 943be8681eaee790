"""One way to build a built-in model: a recipe's hash, cache directory, built-or-not and atomic build; one registry.

A recipe is a frozen dataclass of everything that determines the model it builds (besides library
versions), subclassing `ModelRecipe`. It says what its hash is of (`hash_fields`), what its directory's
name starts with (`prefix`), the context length it is built for (`context`) and how to fill a directory
(`build_into`). The rest is the same for every recipe: the hash is the first 12 hex digits of sha256 over
the canonical JSON of `hash_fields()`; the model lives in `cache_dir()/models/<prefix>-<hash>`, built into
a temp directory and renamed into place under a lock (bench/core/cache.py), and it is built once its
`bench_model.json` (`write_record`) is there.

`MODELS` (a `Registry`, bench/core/registry.py) maps each built-in name to its `BuiltinModel`: the recipe
(made when needed, since a recipe trained on the corpus reads the corpus) and the context length, known
without making it. Registering a built-in is one line, e.g.
`register("tiny-llama-short", 1024, lambda: replace(default_recipe(), steps=5))`.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.cache import build_dir_atomically, cache_dir
from bench.core.registry import Registry

MARKER = "bench_model.json"  # written last by every build: how the model was made; its presence means built


def content_hash(fields: Any) -> str:
    """12 hex digits of sha256 over `fields` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def is_built(path: Path) -> bool:
    return (path / MARKER).exists()


class ModelRecipe(abc.ABC):
    """Everything that determines one built model; subclasses are frozen dataclasses."""

    @property
    @abc.abstractmethod
    def prefix(self) -> str:
        """What the model directory's name starts with, before `-<hash>` (e.g. tiny-llama)."""

    @property
    @abc.abstractmethod
    def context(self) -> int:
        """The context length (tokens) the model is built for: its config's max_position_embeddings."""

    def hash_fields(self) -> Any:
        """What the recipe hash is of (JSON-serialisable; by default the dataclass's fields). Changing it renames
        every cached model."""
        if not dataclasses.is_dataclass(self) or isinstance(self, type):
            raise TypeError(f"{type(self).__name__} is not a dataclass: say what its hash is of (hash_fields)")
        return dataclasses.asdict(self)

    @abc.abstractmethod
    def build_into(self, out: Path, log: Callable[[str], None]) -> None:
        """Write the model into the empty directory `out`, `write_record` last."""

    def recipe_hash(self) -> str:
        return content_hash(self.hash_fields())

    def model_dir(self) -> Path:
        return cache_dir() / "models" / f"{self.prefix}-{self.recipe_hash()}"

    def is_built(self) -> bool:
        return is_built(self.model_dir())

    def build(self, force: bool = False, log: Callable[[str], None] = print) -> Path:
        """The model's directory, building it first if it is not there (or `force`)."""
        target = self.model_dir()
        if is_built(target) and not force:
            return target
        return build_dir_atomically(target, lambda tmp: self.build_into(tmp, log), is_built, force)


def write_record(out: Path, info: dict[str, Any]) -> None:
    """`info` plus the torch and transformers versions as `out/bench_model.json`: the mark of a finished build."""
    import torch
    import transformers

    record = {**info, "torch_version": torch.__version__, "transformers_version": transformers.__version__}
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: how to make its recipe, and the context length it is built for."""

    context: int
    recipe: Callable[[], ModelRecipe]

    def build(self, force: bool = False, log: Callable[[str], None] = print) -> Path:
        return self.recipe().build(force=force, log=log)


MODELS: Registry[BuiltinModel] = Registry("built-in model")


def register(name: str, context: int, recipe: Callable[[], ModelRecipe]) -> BuiltinModel:
    """Add the built-in model `name` to MODELS (a suite or `python -m bench model build` can then name it)."""
    model = BuiltinModel(context, recipe)
    MODELS.add(name, model)
    return model
