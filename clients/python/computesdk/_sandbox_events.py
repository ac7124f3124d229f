"""A sandbox's events: on() callbacks, the event stream, and reconnect(). The
events half of Sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ._rpc import Callback, fire
from .errors import SandboxEventError
from .types import Event, ResourceAlert

if TYPE_CHECKING:
    from .client import Client

CONNECTION_EVENTS = ("connected", "disconnected", "reconnecting")
# The daemon's events that on("error") callbacks also see, under the same type.
ERROR_EVENTS = ("out-of-memory", "corruption", "error")
log = logging.getLogger("computesdk")


class SandboxEvents:
    """Sandbox's event calls; Sandbox inherits them."""

    if TYPE_CHECKING:
        client: Client

        @property
        def id(self) -> str: ...

        async def refresh(self) -> Any: ...

    def _init_events(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._last_event = 0
        self._pending: set[asyncio.Task[None]] = set()

    def on(self, event: str, callback: Callback) -> None:
        """Calls callback for this sandbox's events: 'created', 'ready', 'destroyed',
        'process.started', 'process.exited', 'out-of-memory', ... with the Event;
        'resourceAlert' with a ResourceAlert (.type, .current, .threshold); 'error'
        with a SandboxEventError whose .type is 'out-of-memory', 'corruption',
        'error' or 'connection-lost' (once per lost connection while events are
        followed). 'connected', 'disconnected' and 'reconnecting' are the
        connection's, called with no argument. Events that already happened are
        replayed, so 'ready' is seen after create. A callback that raises is
        logged and does not stop the others."""
        if event in CONNECTION_EVENTS:
            self.client.on(event, callback)
            return
        self._callbacks.setdefault(event, []).append(callback)
        self._follow()

    def _follow(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def events(
        self, *, types: Sequence[str] = (), after: int = 0, follow: bool = True
    ) -> AsyncIterator[Event]:
        async for ev in self.client.events(
            sandbox_ids=[self.id], types=types, after=after, follow=follow
        ):
            yield ev

    async def reconnect(self, *, timeout: float = 30.0) -> None:
        """Opens the client's connection again if it is down, re-reads this sandbox,
        and resumes on() callbacks after the last event they saw."""
        await self.client.reconnect(timeout=timeout)
        await self.refresh()
        if self._callbacks:
            self._follow()

    async def _listen(self) -> None:
        try:
            async for ev in self.client.events(
                sandbox_ids=[self.id], after=self._last_event, on_disconnect=self._lost
            ):
                self._last_event = ev.sequence
                await self._dispatch(ev)
                if ev.type == "destroyed":
                    return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a background task must not die unseen
            if not self.client.closed:  # closing the client ends its listeners quietly
                await self._fire("error", SandboxEventError("error", str(err), self.id, None))

    async def _dispatch(self, ev: Event) -> None:
        if ev.type != "error":
            arg = ResourceAlert.from_event(ev) if ev.type == "resourceAlert" else ev
            await self._fire(ev.type, arg)
        if ev.type in ERROR_EVENTS:
            err = SandboxEventError(ev.type, ev.message or ev.type, self.id, ev)
            await self._fire("error", err)

    async def _fire(self, event: str, arg: object) -> None:
        for cb in list(self._callbacks.get(event, ())):
            try:
                await fire([cb], arg)
            except Exception:
                log.exception("computesdk: a %r callback of sandbox %s failed", event, self.id)

    async def _lost(self) -> None:
        # Off the event stream's task: a callback that calls reconnect() waits for
        # the daemon, while the stream reconnects by itself.
        err = SandboxEventError(
            "connection-lost", f"the connection to computesdkd at {self.client.target} was lost",
            self.id, None,
        )  # fmt: skip
        task = asyncio.create_task(self._fire("error", err))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _stop_listening(self) -> None:
        if self._listener is not None and not self._listener.done():
            # Let the 'destroyed' event reach callbacks before stopping.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._listener), 2.0)
            self._listener.cancel()
