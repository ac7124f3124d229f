"""Sandbox paths, checked the same way for every provider.

Relative paths start at /workspace. ".." that would climb above "/" is refused
outright rather than clamped, so a caller learns that its path was wrong.
"""

from __future__ import annotations

from computesdkd.domain.errors import FailedPrecondition, InvalidArgument

MAX_PATH = 4096
WORKDIR = "/workspace"
# Virtual or agent-owned trees that the file API does not serve.
_RESERVED = ("/.computesdk", "/proc", "/sys", "/dev")


def normalize(path: str) -> str:
    """Returns the absolute in-sandbox path, or raises for one that leaves the sandbox."""
    if not path:
        raise InvalidArgument("path is empty", reason="INVALID_PATH")
    if "\x00" in path or len(path) > MAX_PATH:
        raise InvalidArgument("path has a NUL byte or is too long", reason="INVALID_PATH")
    full = path if path.startswith("/") else f"{WORKDIR}/{path}"
    parts: list[str] = []
    for comp in full.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise InvalidArgument(
                    f"path {path!r} leaves the sandbox", reason="PATH_OUTSIDE_SANDBOX", path=path
                )
            parts.pop()
        else:
            parts.append(comp)
    norm = "/" + "/".join(parts)
    for r in _RESERVED:
        if norm == r or norm.startswith(r + "/"):
            raise FailedPrecondition(
                f"{r} is not served by the file API; read it with exec",
                reason="PATH_NOT_ACCESSIBLE",
                path=path,
            )
    return norm
