"""File operations inside a sandbox, reached as sandbox.files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from computesdk_api.filesystem.v1 import filesystem_pb2 as fs_pb

from . import _rpc
from .errors import SandboxFileNotFoundError
from .types import FileInfo

if TYPE_CHECKING:
    from .sandbox import Sandbox


class Files:
    """File operations inside the sandbox. Relative paths start at /workspace."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    async def read(self, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        buf = bytearray()
        async for chunk in self.read_stream(path, offset=offset, length=length):
            buf.extend(chunk)
        return bytes(buf)

    async def read_text(self, path: str) -> str:
        return (await self.read(path)).decode()

    async def read_stream(
        self, path: str, *, offset: int = 0, length: int = 0
    ) -> AsyncIterator[bytes]:
        req = fs_pb.ReadFileRequest(sandbox_id=self._sb.id, path=path, offset=offset, length=length)
        async for resp in _rpc.stream(self._sb.client.files.ReadFile, req):
            yield resp.data

    async def write(
        self,
        path: str,
        data: bytes | str | AsyncIterator[bytes],
        *,
        mode: int = 0,
        make_parents: bool = True,
        append: bool = False,
    ) -> FileInfo:
        async def requests() -> AsyncIterator[fs_pb.WriteFileRequest]:
            yield fs_pb.WriteFileRequest(
                header=fs_pb.WriteFileHeader(
                    sandbox_id=self._sb.id,
                    path=path,
                    mode=mode,
                    make_parents=make_parents,
                    append=append,
                    expect_finish=True,
                )
            )
            if isinstance(data, (bytes, str)):
                raw = data.encode() if isinstance(data, str) else data
                for piece in _rpc.pieces(raw):
                    yield fs_pb.WriteFileRequest(data=piece)
            else:
                async for piece in data:
                    yield fs_pb.WriteFileRequest(data=piece)
            # Only now is the file put in place: a write cut short changes nothing.
            yield fs_pb.WriteFileRequest(finish=fs_pb.WriteFileFinish())

        resp = await _rpc.call(self._sb.client.files.WriteFile, requests())
        return FileInfo.from_proto(resp.info)

    async def list(self, path: str = "/workspace") -> list[FileInfo]:
        resp = await _rpc.call(
            self._sb.client.files.ListDirectory,
            fs_pb.ListDirectoryRequest(sandbox_id=self._sb.id, path=path),
        )
        return [FileInfo.from_proto(e) for e in resp.entries]

    async def stat(self, path: str) -> FileInfo:
        resp = await _rpc.call(
            self._sb.client.files.StatPath, fs_pb.StatPathRequest(sandbox_id=self._sb.id, path=path)
        )
        return FileInfo.from_proto(resp.info)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except SandboxFileNotFoundError:
            return False
        return True

    async def mkdir(self, path: str, *, parents: bool = True) -> FileInfo:
        resp = await _rpc.call(
            self._sb.client.files.MakeDirectory,
            fs_pb.MakeDirectoryRequest(sandbox_id=self._sb.id, path=path, make_parents=parents),
        )
        return FileInfo.from_proto(resp.info)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await _rpc.call(
            self._sb.client.files.RemovePath,
            fs_pb.RemovePathRequest(sandbox_id=self._sb.id, path=path, recursive=recursive),
        )

    async def move(self, source: str, destination: str) -> FileInfo:
        resp = await _rpc.call(
            self._sb.client.files.MovePath,
            fs_pb.MovePathRequest(sandbox_id=self._sb.id, source=source, destination=destination),
        )
        return FileInfo.from_proto(resp.info)
