"""One sandbox's files through envd: its filesystem service, and /files for the
bytes (http.ServeContent, so byte ranges work)."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from computesdkd.domain.errors import FailedPrecondition, Unsupported
from computesdkd.domain.model import Command, FileInfo, FileKind, Sandbox
from computesdkd.providers.base import ProcessRun
from computesdkd.providers.common import files, http
from computesdkd.providers.common.run import run_checked
from computesdkd.providers.e2b.api import E2BAPI, NAME, envd_version

_KINDS = {
    "FILE_TYPE_FILE": FileKind.FILE,
    "FILE_TYPE_DIRECTORY": FileKind.DIRECTORY,
    "FILE_TYPE_SYMLINK": FileKind.SYMLINK,
}


def _text(e: dict[str, Any], key: str) -> str:
    value = e.get(key)
    return value[:4096] if isinstance(value, str) else ""


def _count(value: object) -> int:
    """A size or mode from envd (protobuf JSON writes 64-bit ones as strings)."""
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _entry(e: object) -> FileInfo:
    e = e if isinstance(e, dict) else {}
    return FileInfo(
        name=_text(e, "name"),
        path=_text(e, "path"),
        kind=_KINDS.get(_text(e, "type"), FileKind.OTHER),
        size=_count(e.get("size")),
        mode=_count(e.get("mode")) & 0o7777,
        mtime=files.rfc3339(_text(e, "modifiedTime")),
        link_target=_text(e, "symlinkTarget"),
    )


# The first envd that takes a raw body on upload (E2B's SDK: ENVD_OCTET_STREAM_UPLOAD).
OCTET_STREAM_UPLOAD = (0, 5, 7)


async def _form(boundary: str, path: str, data: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """One file as multipart/form-data, streamed; the path query names where it goes,
    so the part's file name is only its last segment, quoted as browsers do."""
    name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
    name = name.replace("\\", "%5C").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    yield (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    async for chunk in data:
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


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
            self._api.streams,
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
        content: AsyncIterable[bytes] = body
        if envd_version(self._sandbox.provider_data.get("envd_version")) >= OCTET_STREAM_UPLOAD:
            headers["Content-Type"] = "application/octet-stream"
        else:  # an older envd takes only a form upload
            boundary = secrets.token_hex(16)
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            content = _form(boundary, path, body)
        await http.send(
            self._api.http,
            "POST",
            f"{url}/files",
            provider=NAME,
            what="write file",
            params={"path": path, "username": "root"},
            content=content,
            headers=headers,
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
        return _entry((await self._fs("Stat", {"path": path})).get("entry"))

    async def list_dir(self, path: str) -> list[FileInfo]:
        out = await self._fs("ListDir", {"path": path, "depth": 1})
        entries = out.get("entries")
        return sorted(
            map(_entry, entries if isinstance(entries, list) else []), key=lambda f: f.name
        )

    async def mkdir(self, path: str, parents: bool) -> FileInfo:
        if not parents:
            await files.check_parent(self, path)
        out = await self._fs("MakeDir", {"path": path})
        return _entry(out["entry"]) if isinstance(out.get("entry"), dict) else await self.stat(path)

    async def remove(self, path: str, recursive: bool) -> None:
        await files.check_removable(self, path, recursive)
        await self._fs("Remove", {"path": path})

    async def move(self, source: str, destination: str) -> FileInfo:
        out = await self._fs("Move", {"source": source, "destination": destination})
        return _entry(out.get("entry"))
