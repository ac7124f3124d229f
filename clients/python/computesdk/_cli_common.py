"""Helpers every CLI module uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


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
