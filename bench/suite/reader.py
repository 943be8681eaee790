"""Reading a suite file: YAML with the line of every field, and errors as `FILE:LINE: field: message`.

Errors never reach the user as a traceback: `SuiteError` carries the file, the line of the offending
field, the field path, and the values that would have been valid.
"""
from __future__ import annotations

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


def format_errors(path: Path, index: LineIndex, errors: list[Any], root: type[BaseModel], prefix: tuple = ()) -> str:
    """pydantic errors as one `FILE:LINE: field: message` line each."""
    lines = []
    for err in errors:
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, tuple(err["loc"]))
            valid = ", ".join(owner.model_fields) if owner else ""
            msg = f"unknown field '{loc[-1]}'" + (f"; valid fields: {valid}" if valid else "")
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path}:{line_of(index, loc)}: {dotted(loc)}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path) -> tuple[dict, LineIndex]:
    """The suite's data and the line of each field path; SuiteError for anything that is not a suite."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(f"{path}:{mark.line + 1 if mark else '?'}: YAML syntax error: {exc.problem}") from None
    if not isinstance(data, dict) or node is None:
        raise SuiteError(f"{path}:1: a suite is a YAML mapping with at least 'name', 'models' and 'backends'")
    return data, _line_index(node)
