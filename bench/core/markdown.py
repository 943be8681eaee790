"""Text from user input (variant labels, model names, case ids, failure reasons, paths) made safe to put in
Markdown: in a table cell, a heading, a list item or a code span it reads as the text it is, never as HTML
(`<img onerror=...>`), a link, a code span or a table column of its own.

`text` escapes HTML (`& < >`), the table's `|`, backslashes and backticks, breaks a link's `](` and turns line
breaks into `<br>` (a cell or list item stays one line). `code` makes a code span that no backtick in the text
can close. `fence` gives a code fence longer than any run of backticks in a block. A `Markdown` string is
already Markdown (made by `code`, or by bench itself) and is left as it is.
"""
from __future__ import annotations

import html
import re

_ESCAPED = re.compile(r"([\\`|])")
_LINK = re.compile(r"\]\(")
_NEWLINES = re.compile(r"\r\n|\r|\n")


class Markdown(str):
    """A string that is already Markdown: `text` leaves it unchanged."""


def text(value: object) -> Markdown:
    """`value` as Markdown text that shows exactly that text (see the module docstring)."""
    if isinstance(value, Markdown):
        return value
    escaped = _ESCAPED.sub(r"\\\1", html.escape(str(value), quote=False))
    return Markdown(_NEWLINES.sub("<br>", _LINK.sub(r"]\\(", escaped)))


def code(value: object) -> Markdown:
    """`value` as a code span (shown verbatim, HTML inert): delimited by more backticks than it holds in a row, its
    line breaks as spaces and its `|` escaped, so it stays inside a table cell."""
    inner = _NEWLINES.sub(" ", str(value)).replace("|", "\\|")
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", inner)), default=0) + 1)
    pad = " " if inner.startswith("`") or inner.endswith("`") else ""
    return Markdown(f"{ticks}{pad}{inner}{pad}{ticks}")


def fence(block: str) -> str:
    """A code fence (``` or longer) that no line of `block` can close."""
    return "`" * max(3, max((len(run) + 1 for run in re.findall(r"`+", block)), default=0))
