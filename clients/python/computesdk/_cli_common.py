"""Helpers every CLI module uses."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Column, Table


def _console(**options: Any) -> Console:
    # Data is printed as it is: no markup, emoji codes or highlighting read into it.
    return Console(markup=False, emoji=False, highlight=False, **options)


# Off a terminal Rich draws no color; no width either, so that a row never wraps.
OUT = _console(width=None if sys.stdout.isatty() else 1 << 20)
# Progress goes to stderr, so that stdout stays the command's data.
ERR = _console(stderr=True)


def kv(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"computesdk: --{what} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str, sort_keys=True))


def table(*columns: str | Column, rows: Iterable[Sequence[object]]) -> Table:
    """Rows for print_table or a live view: ruled, with a bold header, on a
    terminal; otherwise columns two spaces apart after a header line."""
    tty = OUT.is_terminal
    t = Table(
        *columns,
        box=box.SIMPLE_HEAD if tty else None,
        header_style="bold" if tty else "",
        show_edge=False,
        pad_edge=False,
    )
    for row in rows:
        t.add_row(*map(str, row))
    return t


def right(name: str) -> Column:
    return Column(name, justify="right")


def print_table(t: Table) -> None:
    if OUT.is_terminal:
        OUT.print(t)
        return
    with OUT.capture() as captured:
        OUT.print(t)
    # Rich pads the last column to its width: plain lines end at their text.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
