"""One way to build a built-in model: a recipe's hash, cache directory, built-or-not and atomic build; one registry.

A recipe is a frozen dataclass of everything that determines the model it builds (besides library
versions), subclassing `ModelRecipe`. It says what its hash is of (`hash_fields`), what its directory's
name starts with (`prefix`), the context length it is built for (`context`) and how to fill a directory
(`build_into`). The rest is the same for every recipe: the hash is the first 12 hex digits of sha256 over
the canonical JSON of `hash_fields()`; the model lives in `cache_dir()/models/<prefix>-<hash>`, built into
a temp directory and renamed into place under a lock (bench/core/cache.py), and it is built once its
`bench_model.json` (`write_record`) is there.

`MODELS` maps each built-in name to its `BuiltinModel`: the recipe (made when needed, since a recipe
trained on the corpus reads the corpus) and the context length, known without making it. Registering a
built-in is one line, e.g. `register("tiny-llama-short", 1024, lambda: replace(default_recipe(), steps=5))`.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.core.cache import build_dir_atomically, cache_dir

MARKER = "bench_model.json"  # written last by every build: how the model was made; its presence means built

T = TypeVar("T")


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


class UnknownName(KeyError):
    """A name no entry of a registry has; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind, in the order they were added."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())


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
    return MODELS.add(name, BuiltinModel(context, recipe))
