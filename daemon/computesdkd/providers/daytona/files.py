"""One sandbox's files through the toolbox's `/files` API: writes go to
`/files/bulk-upload` (the single-file `/files/upload` is gone) as a multipart body
streamed from the caller's chunks (never held whole), reads stream from
`/files/download`. What the toolbox lists is checked: an entry's name is one
path segment and its size a number."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterable, AsyncIterator

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import FileInfo, FileKind, Sandbox
from computesdkd.providers.common import files, http
from computesdkd.providers.daytona.api import NAME, UNBOUNDED, DaytonaAPI, bad_answer, obj


def _info(f: object, path: str) -> FileInfo:
    if not isinstance(f, dict):
        raise bad_answer("file info", "an entry is not an object")
    name = f.get("name")
    if not isinstance(name, str) or "/" in name or name in ("", ".", "..") or "\0" in name:
        raise bad_answer("file info", "an entry's name is not one path segment")
    size = f.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad_answer("file info", "an entry's size is not a number")
    mode = f.get("permissions") or f.get("mode") or "0"
    try:
        bits = int(str(mode)[:8], 8) & 0o7777
    except ValueError:
        bits = 0
    return FileInfo(
        name=name,
        path=path,
        kind=FileKind.DIRECTORY if f.get("isDir") is True else FileKind.FILE,
        size=size,
        mode=bits,
        mtime=files.rfc3339(str(f.get("modifiedAt") or f.get("modTime") or "")[:64]),
    )


# Quotes, backslashes and line breaks cannot break out of the part's header: the
# file name is only informative (files[0].path says where the file goes).
_FILENAME_FORBIDDEN = str.maketrans({'"': "_", "\\": "_", "\r": "_", "\n": "_"})


async def _bulk_form(boundary: str, path: str, data: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The bulk upload's form for one file, streamed (chunked), as Daytona's SDK
    sends an async source (AsyncFileSystem.upload_file_stream)."""
    name = path.rsplit("/", 1)[-1].translate(_FILENAME_FORBIDDEN) or "upload"
    yield (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="files[0].path"\r\n\r\n'
        f"{path}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="files[0].file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    async for chunk in data:
        if chunk:
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


class ToolboxFS:
    def __init__(self, api: DaytonaAPI, sandbox: Sandbox) -> None:
        self._api = api
        self._sandbox = sandbox

    async def folder(self, path: str, *, exist_ok: bool) -> None:
        """Makes path and its missing parents."""
        await self._api.tb(
            self._sandbox,
            "POST",
            "/files/folder",
            "create folder",
            idempotent=exist_ok,  # else a retry after a lost answer would find it there
            params={"path": path, "mode": "755"},
            ok=(409,) if exist_ok else (),
        )

    async def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        await files.check_readable(self, path)
        async with http.stream(
            self._api.http,
            "GET",
            self._api.toolbox(self._sandbox) + "/files/download",
            provider=NAME,
            what="download",
            not_found="FILE_NOT_FOUND",
            params={"path": path},
            headers=self._api.auth,
            extensions=UNBOUNDED,  # read as a stream, and only up to offset + length
        ) as resp:
            # The toolbox has no ranges: skip to offset, stop at offset + length.
            pos = 0
            end = offset + length if length else None
            async for chunk in resp.aiter_bytes():
                lo = max(offset - pos, 0)
                hi = len(chunk) if end is None else min(len(chunk), end - pos)
                pos += len(chunk)
                if hi > lo:
                    yield chunk[lo:hi]
                if end is not None and pos >= end:
                    return

    async def write(
        self, path: str, chunks: AsyncIterator[bytes], mode: int, parents: bool, append: bool
    ) -> tuple[FileInfo, int]:
        if append:
            raise Unsupported(NAME, "append writes", "the toolbox replaces files on upload")
        if not parents:  # the bulk upload makes missing parents on its own
            await files.check_parent(self, path)
        body, boundary = files.Counted(chunks), "----DaytonaUpload" + secrets.token_hex(12)
        await self._api.tb(
            self._sandbox,
            "POST",
            "/files/bulk-upload",
            "upload",
            content=_bulk_form(boundary, path, body),  # a stream: sent once
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        if mode:
            await self._api.tb(
                self._sandbox,
                "POST",
                "/files/permissions",
                "chmod",
                idempotent=True,
                params={"path": path, "mode": oct(mode)[2:]},
            )
        return await self.stat(path), body.bytes

    async def stat(self, path: str) -> FileInfo:
        resp = await self._api.tb(
            self._sandbox, "GET", "/files/info", "stat", params={"path": path}
        )
        return _info(obj(resp, "stat"), path)

    async def list_dir(self, path: str) -> list[FileInfo]:
        resp = await self._api.tb(self._sandbox, "GET", "/files", "list", params={"path": path})
        try:
            entries = resp.json()
        except ValueError:
            raise bad_answer("list", "the answer is not JSON") from None
        if not isinstance(entries, list):
            raise bad_answer("list", "the answer is not a list")
        parent = path.rstrip("/")
        infos = [_info(f, "") for f in entries]
        return sorted(
            (dataclasses.replace(f, path=f"{parent}/{f.name}") for f in infos),
            key=lambda f: f.name,
        )

    async def mkdir(self, path: str, parents: bool) -> FileInfo:
        if not parents:
            await files.check_parent(self, path)
        await self.folder(path, exist_ok=False)
        return await self.stat(path)

    async def remove(self, path: str, recursive: bool) -> None:
        await files.check_removable(self, path, recursive)
        await self._api.tb(
            self._sandbox, "DELETE", "/files", "remove", params={"path": path, "recursive": "true"}
        )

    async def move(self, source: str, destination: str) -> FileInfo:
        await self._api.tb(
            self._sandbox,
            "POST",
            "/files/move",
            "move",
            params={"source": source, "destination": destination},
        )
        return await self.stat(destination)
