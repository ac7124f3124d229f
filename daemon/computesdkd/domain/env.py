"""Environment variable names: what a process environment can carry."""

from __future__ import annotations

from collections.abc import Iterable

from computesdkd.domain.errors import InvalidArgument


def is_env_name(name: str) -> bool:
    """Not empty, no "=" (it ends the name in NAME=VALUE), no NUL (it ends the string)."""
    return bool(name) and "=" not in name and "\x00" not in name


def check_env_names(names: Iterable[str]) -> None:
    """Refuses the first name a process environment cannot carry."""
    for name in names:
        if not is_env_name(name):
            raise InvalidArgument(f"bad environment variable name {name!r}", reason="INVALID_ENV")
