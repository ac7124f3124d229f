"""The POSIX answers that vendors' file APIs leave out, checked before the call.

Vendors read a directory as empty bytes, remove a non-empty one without
recursive, and make missing parents unasked; the daemon answers the same on
every provider, as local does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

from computesdkd.domain.errors import FailedPrecondition
from computesdkd.domain.model import FileInfo, FileKind


class Tree(Protocol):
    async def stat(self, path: str) -> FileInfo: ...

    async def list_dir(self, path: str) -> list[FileInfo]: ...


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def rfc3339(value: str) -> float:
    """A vendor's timestamp as Unix seconds; 0 when it sent none we can read."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


async def check_readable(fs: Tree, path: str) -> None:
    if (await fs.stat(path)).kind == FileKind.DIRECTORY:
        raise FailedPrecondition(f"{path}: is a directory", reason="IS_A_DIRECTORY")


async def check_parent(fs: Tree, path: str) -> None:
    """Raises FILE_NOT_FOUND, as mkdir(2) and open(2) do, when the parent is missing."""
    await fs.stat(parent_of(path))


async def check_removable(fs: Tree, path: str, recursive: bool) -> None:
    info = await fs.stat(path)
    if info.kind == FileKind.DIRECTORY and not recursive and await fs.list_dir(path):
        raise FailedPrecondition(
            f"{path}: directory not empty", reason="DIRECTORY_NOT_EMPTY", path=path
        )


class Counted:
    """Passes chunks on, counting their bytes: what a write reports as written."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.bytes = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.bytes += len(chunk)
            yield chunk
