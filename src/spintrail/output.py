"""CLI output in one vocabulary: ``--format table|json|csv`` for every command that prints rows."""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def cell(value: Any) -> str:
    """One value as CSV or table text (lists joined with ``;``)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def emit(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: Format,
    *,
    title: str | None = None,
    out: TextIO | None = None,
    table_columns: Sequence[str] | None = None,
) -> None:
    """Print rows: a Rich table, a JSON array of objects, or CSV with a header row."""
    out = out or sys.stdout
    if fmt is Format.json:
        out.write(json.dumps([{c: r.get(c) for c in columns} for r in rows], ensure_ascii=False, indent=2))
        out.write("\n")
    elif fmt is Format.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell(r.get(c)) for c in columns])
    else:
        shown = table_columns or columns
        table = Table(title=title, show_lines=False, header_style="bold")
        for c in shown:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*(cell(r.get(c)) for c in shown))
        Console(file=out, soft_wrap=False, width=max(120, Console().width)).print(table)
