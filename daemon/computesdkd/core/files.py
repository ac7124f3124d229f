"""File calls on a running sandbox: paths are normalised once, here, and the
provider does the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator

from computesdkd.core.registry import Registry
from computesdkd.domain.model import FileInfo
from computesdkd.domain.paths import normalize
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require


class Files:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def read(self, sandbox_id: str, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        sb, provider = self._registry.running(sandbox_id)
        return require(provider, caps.Files, "filesystem").read_file(
            sb, normalize(path), offset, length
        )

    async def write(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.Files, "filesystem").write_file(
            sb, normalize(path), chunks, mode=mode, make_parents=make_parents, append=append
        )

    async def list_dir(self, sandbox_id: str, path: str) -> list[FileInfo]:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.Files, "filesystem").list_dir(sb, normalize(path))

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.Files, "filesystem").stat(sb, normalize(path))

    async def mkdir(self, sandbox_id: str, path: str, parents: bool) -> FileInfo:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.Files, "filesystem").mkdir(sb, normalize(path), parents)

    async def remove(self, sandbox_id: str, path: str, recursive: bool) -> None:
        sb, provider = self._registry.running(sandbox_id)
        await require(provider, caps.Files, "filesystem").remove(sb, normalize(path), recursive)

    async def move(self, sandbox_id: str, source: str, destination: str) -> FileInfo:
        sb, provider = self._registry.running(sandbox_id)
        return await require(provider, caps.Files, "filesystem").move(
            sb, normalize(source), normalize(destination)
        )
