"""The file calls as one object per sandbox (a vendor's file API, or ExecFS for
back ends without one), so each adapter writes that object, not the delegation.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Protocol

from computesdkd.domain.model import FileInfo, Sandbox
from computesdkd.providers.capabilities import Files


class FileAPI(Protocol):
    def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]: ...

    async def write(
        self, path: str, chunks: AsyncIterator[bytes], mode: int, parents: bool, append: bool
    ) -> tuple[FileInfo, int]: ...

    async def stat(self, path: str) -> FileInfo: ...

    async def list_dir(self, path: str) -> list[FileInfo]: ...

    async def mkdir(self, path: str, parents: bool) -> FileInfo: ...

    async def remove(self, path: str, recursive: bool) -> None: ...

    async def move(self, source: str, destination: str) -> FileInfo: ...


class FileAPIFiles(Files):
    """capabilities.Files carried by the object _fs returns for a sandbox."""

    @abstractmethod
    def _fs(self, sandbox: Sandbox) -> FileAPI: ...

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        async for chunk in self._fs(sandbox).read(path, offset, length):
            yield chunk

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        return await self._fs(sandbox).write(path, chunks, mode, make_parents, append)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        return await self._fs(sandbox).stat(path)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        return await self._fs(sandbox).list_dir(path)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return await self._fs(sandbox).mkdir(path, parents)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        await self._fs(sandbox).remove(path, recursive)

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        return await self._fs(sandbox).move(source, destination)
