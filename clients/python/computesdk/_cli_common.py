"""Helpers every CLI module uses: the consoles, the one JSON shape, tables, the
exit codes and the parser whose usage errors exit 125."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Column, Table

from .errors import ComputeSDKError

# Exit codes, as docker's: 125 the CLI or the daemon failed (usage errors too, as
# docker's flag errors), 126 the command cannot be run, 127 it was not found,
# 130 Ctrl-C, 141 the reader of stdout went away (SIGPIPE's 128+13); otherwise
# the command's own code, 128+N when signal N killed it.
FAILED, CANNOT_RUN, NOT_FOUND, INTERRUPTED, BROKEN_PIPE = 125, 126, 127, 130, 141


class CLIError(Exception):
    """A failure of the CLI's own: main prints it and exits 125."""


class UsageError(CLIError):
    """A command line the CLI cannot carry out."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits FAILED (docker's 125), not 2, so that
    `exec`'s codes 1-124 and 128+ are always the command's own."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(FAILED, f"{self.prog}: error: {message}\n")


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
            raise UsageError(f"--{what} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


# ------------------------------------------------------------ the JSON shape
#
# One shape for every --json (README, "The command line"): snake_case field
# names as in the protos, every field present (an unset message is null),
# numbers as JSON numbers (int64 too), enum values lower-case without their
# prefix (STATE_RUNNING is "running"), times RFC 3339 in UTC with a Z and
# microseconds, bytes base64 (as proto3 JSON has them).


def rfc3339(t: datetime) -> str:
    """A time as RFC 3339 in UTC; a naive time is UTC already (Timestamp.ToDatetime)."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enum_name(e: EnumDescriptor, number: int) -> str | int:
    value = e.values_by_number.get(number)
    if value is None:
        return number  # from a newer daemon: the number is all there is
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", e.name).upper() + "_"
    return value.name.removeprefix(prefix).lower()


def _field(f: Any, v: Any) -> Any:  # a FieldDescriptor (upb's or the Python one)
    if f.message_type is not None:
        return _message(v)
    if f.enum_type is not None:
        return _enum_name(f.enum_type, v)
    return jsonable(v)


def _message(m: Message) -> Any:
    d = m.DESCRIPTOR
    if d.full_name == "google.protobuf.Timestamp":
        return rfc3339(m.ToDatetime())  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for f in d.fields:
        if f.containing_oneof is not None and not m.HasField(f.name):
            continue  # only the member that is set
        v = getattr(m, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            out[f.name] = {str(k): _field(value, x) for k, x in v.items()}
        elif f.is_repeated:
            out[f.name] = [_field(f, x) for x in v]
        elif f.message_type is not None and not m.HasField(f.name):
            out[f.name] = None
        else:
            out[f.name] = _field(f, v)
    return out


def jsonable(obj: Any) -> Any:
    """obj (a proto message, a dataclass, or containers of them) in the one shape."""
    if isinstance(obj, Message):
        return _message(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in obj]
    if isinstance(obj, datetime):
        return rfc3339(obj)
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    if isinstance(obj, enum.Enum):
        return str(obj.name).lower()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def print_json(obj: Any) -> None:
    """One JSON value on one line (a stream of them for following commands)."""
    sys.stdout.write(json.dumps(jsonable(obj), sort_keys=True) + "\n")


def error_json(exc: ComputeSDKError) -> dict[str, Any]:
    return {
        "error": {
            "code": exc.code.name,
            "reason": exc.reason,
            "message": exc.message,
            "metadata": dict(exc.metadata),
        }
    }


# ------------------------------------------------------------ tables


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
