"""Reading a suite file: YAML with the line of every field, and errors as `FILE:LINE: field: message`.

It lives in bench/records because both the suite reader (bench/suite) and the run loader (a format-1 run's
suite snapshot, bench/records/rundir.py) read suites with it.

Errors never reach the user as a traceback: `SuiteError` carries the file, the line of the offending
field, the field path, and the values that would have been valid.
"""
from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from bench.errors import BadInput

LineIndex = dict[tuple, int]


class SuiteError(BadInput):
    """A suite that cannot be run; str() is the message shown to the user (exit code 2)."""


def _line_index(node, path: tuple = (), index: LineIndex | None = None) -> LineIndex:
    index = {} if index is None else index
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), index)
    return index


def line_of(index: LineIndex, loc: tuple) -> int:
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in index:
            return index[tuple(loc[:end])]
    return 1


def dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for listing valid field names)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


_UNION_MEMBER = re.compile(r"^(int|float|str|bool|list\[.*\]|dict\[.*\]|function-.*)$")


def format_errors(path: Path, index: LineIndex, errors: list[Any], root: type[BaseModel], prefix: tuple = ()) -> str:
    """pydantic errors as one `FILE:LINE: field: message` line per field (a union's members merged)."""
    merged: dict[tuple, list[Any]] = {}
    for err in errors:
        # a value that fits no member of a union (int | list[int]) gets one error per member: one line
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        merged.setdefault(loc, []).append(err)
    lines = []
    for loc, group in merged.items():
        err = group[0]
        msg = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in group))
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, tuple(p for p in err["loc"] if not (isinstance(p, str) and
                                                                       p.startswith("function-"))))
            valid = ", ".join(owner.model_fields) if owner else ""
            msg = f"unknown field '{loc[-1]}'" + (f"; valid fields: {valid}" if valid else "")
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path}:{line_of(index, loc)}: {dotted(loc)}: {msg}")
    return "\n".join(lines)


# libyaml's parser when PyYAML was built with it (the wheels are): the pure-Python one takes ~15 s per pass over
# a suite of 10,000 variants; the same safe constructor either way
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_SUITE_BYTES = 1_000_000  # a suite is a short text; anything bigger is a mistake (or /dev/zero)
MAX_DEPTH = 32  # a suite nests four or five levels
MAX_NODES = 100_000  # nodes after alias expansion: a few hundred in a real suite, billions in a "billion laughs"


def _read_text(path: Path) -> str:
    """The file's text: a regular file, at most MAX_SUITE_BYTES, UTF-8. Never blocks on a FIFO."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SuiteError(f"{path}:1: not a regular file (a directory, FIFO or device cannot be a suite)")
    if info.st_size > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}:1: {info.st_size} bytes; a suite is at most {MAX_SUITE_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SUITE_BYTES + 1)
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite: {exc.strerror}") from None
    if len(raw) > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}:1: more than {MAX_SUITE_BYTES} bytes; a suite is a short text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SuiteError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); a suite is a UTF-8 YAML "
                         f"file") from None


class _Frame:
    """An open mapping or sequence while scanning YAML events."""

    def __init__(self, event) -> None:
        self.mapping = isinstance(event, yaml.MappingStartEvent)
        self.anchor = event.anchor
        self.size = 1  # nodes under it, aliases expanded
        self.items = 0
        self.keys: dict[str, int] = {}  # scalar key -> its line


def _check_structure(path: Path, text: str) -> None:
    """Reject, before anything is built: nesting deeper than MAX_DEPTH, an alias inside its own anchor, more
    than MAX_NODES nodes once aliases are expanded, and a key given twice in one mapping. One pass over the
    parser's events (no recursion), so a hostile file costs time linear in its length."""
    stack: list[_Frame] = []
    sizes: dict[str, int] = {}

    def fail(event, message: str) -> SuiteError:
        return SuiteError(f"{path}:{event.start_mark.line + 1}: {message}")

    def add(event, size: int, key: str | None = None) -> None:
        if not stack:
            return
        frame = stack[-1]
        if frame.mapping and frame.items % 2 == 0 and key is not None:
            if key in frame.keys:
                raise fail(event, f"duplicate key '{key}' (first given at line {frame.keys[key]}); a key may "
                                  f"appear once in a mapping")
            frame.keys[key] = event.start_mark.line + 1
        frame.items += 1
        frame.size += size
        if frame.size > MAX_NODES:
            raise fail(event, f"the document expands to more than {MAX_NODES} nodes through its aliases; "
                              f"a suite needs a few hundred")

    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise fail(event, f"nested deeper than {MAX_DEPTH} levels; a suite needs about five")
            stack.append(_Frame(event))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frame = stack.pop()
            if frame.anchor is not None:
                sizes[frame.anchor] = frame.size
            add(event, frame.size)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            add(event, 1, key=event.value)
        elif isinstance(event, yaml.AliasEvent):
            if any(frame.anchor == event.anchor for frame in stack):
                raise fail(event, f"alias *{event.anchor} refers to an anchor that contains it (a recursive "
                                  f"structure)")
            add(event, sizes.get(event.anchor or "", 1))


def read_yaml(path: Path) -> tuple[dict, LineIndex]:
    """The suite's data and the line of each field path; SuiteError for anything that is not a suite."""
    text = _read_text(path)
    try:
        _check_structure(path, text)
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(f"{path}:{mark.line + 1 if mark else '?'}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}:1: YAML error: {exc}") from None
    if not isinstance(data, dict) or node is None:
        raise SuiteError(f"{path}:1: a suite is a YAML mapping with at least 'name', 'models' and 'backends'")
    return data, _line_index(node)
