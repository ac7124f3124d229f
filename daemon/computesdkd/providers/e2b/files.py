"""One sandbox's files through envd: its filesystem service, and /files for the
bytes (http.ServeContent, so byte ranges work)."""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator, Callable
from typing import Any

from computesdkd.domain.errors import FailedPrecondition, Unsupported
from computesdkd.domain.model import Command, FileInfo, FileKind, Sandbox
from computesdkd.providers.base import ProcessRun
from computesdkd.providers.common import files, http
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.e2b.api import E2BAPI, NAME

_KINDS = {
    "FILE_TYPE_FILE": FileKind.FILE,
    "FILE_TYPE_DIRECTORY": FileKind.DIRECTORY,
    "FILE_TYPE_SYMLINK": FileKind.SYMLINK,
}


def _entry(e: dict[str, Any]) -> FileInfo:
    return FileInfo(
        name=e.get("name", ""),
        path=e.get("path", ""),
        kind=_KINDS.get(e.get("type", ""), FileKind.OTHER),
        size=int(e.get("size", 0)),
        mode=int(e.get("mode", 0)) & 0o7777,
        mtime=files.rfc3339(e.get("modifiedTime", "")),
        link_target=e.get("symlinkTarget", ""),
    )


class EnvdFS:
    def __init__(self, api: E2BAPI, sandbox: Sandbox, run: Callable[[Command], ProcessRun]) -> None:
        self._api = api
        self._sandbox = sandbox
        self._run = run

    async def _fs(self, method: str, msg: dict[str, Any]) -> dict[str, Any]:
        return await self._api.rpc(self._sandbox, f"filesystem.Filesystem/{method}", msg)

    async def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        await files.check_readable(self, path)
        url, headers = self._api.envd(self._sandbox)
        if offset or length:
            end = str(offset + length - 1) if length else ""
            headers["Range"] = f"bytes={offset}-{end}"
        async with http.stream(
            self._api.http,
            "GET",
            f"{url}/files",
            provider=NAME,
            what="read file",
            not_found="FILE_NOT_FOUND",
            ok=(200, 206, 416),
            headers=headers,
            params={"path": path, "username": "root"},
        ) as resp:
            if resp.status_code == 416:  # the range starts past the end: nothing to read
                return
            async for chunk in resp.aiter_bytes():
                yield chunk

    async def write(
        self, path: str, chunks: AsyncIterator[bytes], mode: int, parents: bool, append: bool
    ) -> tuple[FileInfo, int]:
        # envd makes missing parents whatever parents says
        if append:
            raise Unsupported(NAME, "append writes", "envd replaces files on upload")
        body = files.Counted(chunks)
        url, headers = self._api.envd(self._sandbox)
        await http.send(
            self._api.http,
            "POST",
            f"{url}/files",
            provider=NAME,
            what="write file",
            params={"path": path, "username": "root"},
            content=body,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        if mode:
            args = ["chmod", oct(mode)[2:], "--", path]
            await run_checked(
                self._run(Command(args=args, cwd="/")),
                FailedPrecondition(
                    f"{shlex.join(args)} failed in the sandbox", reason="PERMISSION_DENIED"
                ),
            )
        return await self.stat(path), body.bytes

    async def stat(self, path: str) -> FileInfo:
        return _entry((await self._fs("Stat", {"path": path}))["entry"])

    async def list_dir(self, path: str) -> list[FileInfo]:
        out = await self._fs("ListDir", {"path": path, "depth": 1})
        return sorted((_entry(e) for e in out.get("entries", [])), key=lambda f: f.name)

    async def mkdir(self, path: str, parents: bool) -> FileInfo:
        if not parents:
            await files.check_parent(self, path)
        out = await self._fs("MakeDir", {"path": path})
        return _entry(out["entry"]) if out.get("entry") else await self.stat(path)

    async def remove(self, path: str, recursive: bool) -> None:
        await files.check_removable(self, path, recursive)
        await self._fs("Remove", {"path": path})

    async def move(self, source: str, destination: str) -> FileInfo:
        out = await self._fs("Move", {"source": source, "destination": destination})
        return _entry(out["entry"])
