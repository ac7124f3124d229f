"""A blocking facade over the async client, for scripts and code without asyncio.

    from computesdk.sync import compute

    with compute("local", template="python") as sandbox:
        print(sandbox.exec("python3 --version").stdout)

The async client runs on a private event loop in a background thread; every
call here waits for its result. Streams come back as ordinary iterators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ._rpc import target_for
from .client import Client
from .sandbox import Sandbox
from .types import (
    Event,
    ExecResult,
    FileInfo,
    HealthReport,
    OutputChunk,
    ResourceUsage,
    SandboxStatus,
)

T = TypeVar("T")


class _Loop:
    """One event loop on a daemon thread, shared by a SyncClient and its sandboxes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        it = aiter(agen)
        try:
            while True:
                try:
                    yield self.run(anext(it))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(it, "aclose", None)
            if close is not None:
                self.run(close())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class SyncFiles:
    def __init__(self, sb: SyncSandbox) -> None:
        self._sb = sb

    def read(self, path: str, *, offset: int = 0, length: int = 0) -> bytes:
        return self._sb._loop.run(self._sb.aio.files.read(path, offset=offset, length=length))

    def read_text(self, path: str) -> str:
        return self.read(path).decode()

    def write(
        self,
        path: str,
        data: bytes | str,
        *,
        mode: int = 0,
        make_parents: bool = True,
        append: bool = False,
    ) -> FileInfo:
        return self._sb._loop.run(
            self._sb.aio.files.write(
                path, data, mode=mode, make_parents=make_parents, append=append
            )
        )

    def list(self, path: str = "/workspace") -> list[FileInfo]:
        return self._sb._loop.run(self._sb.aio.files.list(path))

    def stat(self, path: str) -> FileInfo:
        return self._sb._loop.run(self._sb.aio.files.stat(path))

    def exists(self, path: str) -> bool:
        return self._sb._loop.run(self._sb.aio.files.exists(path))

    def mkdir(self, path: str, *, parents: bool = True) -> FileInfo:
        return self._sb._loop.run(self._sb.aio.files.mkdir(path, parents=parents))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._sb._loop.run(self._sb.aio.files.remove(path, recursive=recursive))

    def move(self, source: str, destination: str) -> FileInfo:
        return self._sb._loop.run(self._sb.aio.files.move(source, destination))


class _Blocking:
    """Any other part of the async client, blocking: a coroutine runs to its
    result, an async iterator becomes an iterator, a Sandbox a SyncSandbox, and a
    helper object (client.pools, sandbox.snapshots, ...) another _Blocking."""

    def __init__(self, loop: _Loop, target: object) -> None:
        self._loop = loop
        self._target = target

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, Sandbox):
            return SyncSandbox(self._loop, value)
        if isinstance(value, list):
            return [self._wrap(v) for v in value]
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return _Blocking(self._loop, attr) if _is_helper(attr) else attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.iscoroutine(result):
                return self._wrap(self._loop.run(result))
            if inspect.isasyncgen(result):
                return (self._wrap(v) for v in self._loop.iterate(result))
            return self._wrap(result)

        return call


def _is_helper(value: object) -> bool:
    """The async client's helper objects: pools, groups, snapshots, volumes, ...;
    not its plain records (sandbox.config, results), which come back as they are."""
    return (
        type(value).__module__.startswith("computesdk.")
        and not isinstance(value, Sandbox)
        and not dataclasses.is_dataclass(value)
    )


class SyncSandbox:
    """The blocking twin of Sandbox; `aio` is the async one underneath."""

    def __init__(self, loop: _Loop, aio: Sandbox) -> None:
        self._loop = loop
        self.aio = aio
        self.files = SyncFiles(self)

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def provider(self) -> str:
        return self.aio.provider

    def __repr__(self) -> str:
        return f"SyncSandbox(id={self.id!r}, provider={self.provider!r})"

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        stdin: bytes | str | None = None,
        check: bool = True,
    ) -> ExecResult:
        return self._loop.run(
            self.aio.exec(
                command, cwd=cwd, env=env, timeout_ms=timeout_ms, stdin=stdin, check=check
            )
        )

    def exec_stream(
        self,
        command: str | Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
    ) -> Iterator[OutputChunk]:
        stream = self.aio.exec_stream(command, cwd=cwd, env=env, timeout_ms=timeout_ms)
        return self._loop.iterate(stream.__aiter__())

    def get_status(self) -> SandboxStatus:
        return self._loop.run(self.aio.get_status())

    def get_resource_usage(self) -> ResourceUsage:
        return self._loop.run(self.aio.get_resource_usage())

    def health_check(self) -> bool:
        return self._loop.run(self.aio.health_check())

    def health_report(self) -> HealthReport:
        return self._loop.run(self.aio.health_report())

    def events(
        self, *, types: Sequence[str] = (), after: int = 0, follow: bool = False
    ) -> Iterator[Event]:
        return self._loop.iterate(self.aio.events(types=types, after=after, follow=follow))

    def destroy(self, *, graceful: bool = False, timeout_ms: int = 0) -> None:
        self._loop.run(self.aio.destroy(graceful=graceful, timeout_ms=timeout_ms))

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Sandbox.on; callbacks run on the client's event-loop thread."""
        self._loop.loop.call_soon_threadsafe(self.aio.on, event, callback)

    def __getattr__(self, name: str) -> Any:
        # Everything not spelled out above (reset, restart, snapshots, set_env, ...).
        return getattr(_Blocking(self._loop, self.aio), name)


class SyncClient:
    def __init__(
        self,
        *,
        socket: str | os.PathLike[str] | None = None,
        target: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._loop = _Loop()
        try:
            self.aio = self._loop.run(Client.connect(socket=socket, target=target, timeout=timeout))
        except BaseException:
            self._loop.stop()
            raise

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run(self.aio.close())
        self._loop.stop()

    def create(self, provider: str = "", **options: Any) -> SyncSandbox:
        """Client.create's options: template (a name or an inline definition),
        metadata, resources, env, volumes, restore_from, import_state, ..."""
        return SyncSandbox(self._loop, self._loop.run(self.aio.create(provider, **options)))

    def list_active_sandboxes(self) -> list[SyncSandbox]:
        return [
            SyncSandbox(self._loop, sb) for sb in self._loop.run(self.aio.list_active_sandboxes())
        ]

    def __getattr__(self, name: str) -> Any:
        # Everything not spelled out here: pools, groups, networks, channels,
        # states, volumes, batch_create, list_active_sandboxes, providers, ...
        return getattr(_Blocking(self._loop, self.aio), name)

    def get(self, sandbox_id: str) -> SyncSandbox:
        return SyncSandbox(self._loop, self._loop.run(self.aio.get(sandbox_id)))

    def list(
        self, *, metadata: Mapping[str, str] | None = None, states: Sequence[str] = ()
    ) -> list[SyncSandbox]:
        items = self._loop.run(self.aio.list(metadata=metadata, states=states))
        return [SyncSandbox(self._loop, sb) for sb in items]


def compute(
    provider: str = "local",
    *,
    socket: str | os.PathLike[str] | None = None,
    target: str | None = None,
    **options: Any,
) -> SyncSandbox:
    """Creates a sandbox on a client of its own, closed when the sandbox is destroyed."""
    client = SyncClient(socket=socket, target=target)
    sb = client.create(provider, **options)
    destroy = sb.destroy

    def destroy_and_close(*, graceful: bool = False, timeout_ms: int = 0) -> None:
        try:
            destroy(graceful=graceful, timeout_ms=timeout_ms)
        finally:
            client.close()

    sb.destroy = destroy_and_close  # type: ignore[method-assign]
    return sb


_shared: dict[str, SyncClient] = {}


def list_active_sandboxes(
    *, socket: str | os.PathLike[str] | None = None, target: str | None = None
) -> list[SyncSandbox]:
    """Every running sandbox, over one connection kept for these calls."""
    key = target_for(socket, target)
    if key not in _shared:
        _shared[key] = SyncClient(socket=socket, target=target)
    return _shared[key].list(states=["running"])
