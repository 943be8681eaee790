"""One registry mechanism: named entries of one kind, each an object or a lazy "package.module:attr" import path.

Backends (`backends/__init__.py`), tasks (`bench/exec/tasks.py`), built-in models (`bench/models/recipe.py`)
and server kinds (`bench/serving/launch/servers.py`) are each a `Registry`. An entry given as an import path
is imported on first use, so listing a registry's names imports nothing heavy. An unknown name raises one
error (`UnknownName`, or the registry's subclass of it) that lists the registered names; an import path that
cannot be imported raises the same error, saying why.

An entry of an upper layer registers itself in a lower layer's registry (`registry.add(name, entry)` in its
own module), or the top of the program registers it: no lower module names an upper one.
`tests/test_architecture.py` reads every "module:attr" string as an edge, like an import statement.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # "package.module:attr", attr maybe dotted


class UnknownName(KeyError):
    """A name no entry of a registry has, or an entry whose import path cannot be imported; the message says which."""

    def __str__(self) -> str:
        return str(self.args[0])


def import_target(path: str) -> Any:
    """The object the import path "package.module:attr" names (ImportError, AttributeError or ValueError if none)."""
    if IMPORT_PATH.fullmatch(path) is None:
        raise ValueError(f"{path!r} is not an import path 'package.module:attr'")
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def import_path_of(entry: Any) -> str:
    """The import path "module:qualname" of a function or class defined at a module's top level."""
    return f"{entry.__module__}:{entry.__qualname__}"


def _identity(entry: Any) -> Any:
    """What makes two registrations the same: an import path for a function or class (and an import path itself)."""
    return import_path_of(entry) if isinstance(getattr(entry, "__qualname__", None), str) else entry


class Registry(Generic[T]):
    """Named entries of one kind, in the order they were added.

    `kind` names them in messages ("unknown {kind} 'x'; {listing}: a, b"); `error` is the UnknownName subclass
    raised; with `paths`, a name that is not registered but has a ":" is an import path of its own (a suite's
    `backend: package.module:Class`)."""

    def __init__(self, kind: str, entries: Mapping[str, T | str] | None = None, *,
                 error: type[UnknownName] = UnknownName, listing: str = "valid names", paths: bool = False) -> None:
        self.kind = kind
        self.error = error
        self.listing = listing
        self.paths = paths
        self._entries: dict[str, T | str] = {}  # a str: an import path, not imported yet
        self._paths: dict[str, str] = {}  # the import path each lazy entry was registered with
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: T | str) -> None:
        """Register `entry` (an object, or an import path "package.module:attr" imported on first use) as `name`.
        Registering the same entry again (the same object, or an object and its import path) changes nothing."""
        if name in self._entries:
            if self._same(name, entry):
                return
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        if isinstance(entry, str):
            self._paths[name] = entry

    def _same(self, name: str, entry: T | str) -> bool:
        existing = self._paths.get(name, self._entries[name])
        return existing is entry or _identity(existing) == _identity(entry)

    def remove(self, name: str) -> T | str:
        self._paths.pop(name, None)
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        """The entry `name` (imported now if it was registered as an import path), or with `paths` the object the
        import path `name` names; else the registry's error, listing the registered names."""
        if name in self._entries:
            entry = self._entries[name]
            if isinstance(entry, str):
                entry = self._entries[name] = self._import(name, entry)
            return cast(T, entry)
        if self.paths and ":" in name:
            return cast(T, self._import(name, name))
        raise self.error(f"unknown {self.kind} {name!r}; {self.listing}: {', '.join(sorted(self._entries))}")

    def _import(self, name: str, path: str) -> Any:
        try:
            return import_target(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise self.error(f"{self.kind} {name!r} -> {path} cannot be imported: {exc}") from exc

    def path(self, name: str) -> str:
        """The import path of the entry `name` ("module:attr"), importing nothing: what another process imports."""
        if name in self._paths:
            return self._paths[name]
        return import_path_of(self[name])

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """Every (name, entry), each imported if it was registered as an import path."""
        return [(name, self[name]) for name in self._entries]
