"""The table model every table bench shows is built in, and its Markdown.

A `Table` has a title, `Column`s (a header, the glossary entry it links to, text or number alignment), rows of
`Cell`s and notes. A cell is a main text, an optional interval ("2.002" and "[2.001, 2.004]") and an optional
remark: Markdown prints them on one line (`Cell.inline`), the HTML report (bench/report/templates) stacks them.
`markdown` renders a table; every header, cell and note is escaped as user text (bench/core/markdown.py: HTML,
`|`, backticks, line breaks) unless it is already Markdown (`md.code(...)`, a `md.Markdown`).

The report's tables (bench/report/tables.py) and the gate's alerts (bench/gate/alerts.py) are built in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.core import markdown as md
from bench.presentation.formatting import NOT_AVAILABLE


@dataclass(frozen=True)
class Cell:
    text: str
    interval: str = ""  # kept on one line
    detail: str = ""  # a remark that may wrap

    def inline(self) -> str:
        """The cell on one line; a cell of text alone is that text (a `md.Markdown` stays Markdown)."""
        if not self.interval and not self.detail:
            return self.text
        return " ".join(part for part in (self.text, self.interval, f"({self.detail})" if self.detail else "")
                        if part)


@dataclass
class Column:
    header: str
    metric: str | None = None  # the glossary entry the header links to
    left: bool = False  # text column (left-aligned)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


NA = Cell(NOT_AVAILABLE)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; every header and cell is escaped (see the module docstring)."""
    lines = ["| " + " | ".join(map(md.text, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(md.text, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(table: Table) -> str:
    """A table as Markdown (its title is the caller's heading), its notes below it, escaped as its cells are."""
    body = md_table([c.header for c in table.columns], [[cell.inline() for cell in row] for row in table.rows])
    return "\n\n".join([body, *map(md.text, table.notes)])
