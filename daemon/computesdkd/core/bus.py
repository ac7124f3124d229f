"""The event bus: every event is stored with a sequence number, then fanned out.

A subscriber that passes the last sequence it saw gets the stored backlog and
then live events, with none lost and none repeated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection

from computesdkd.domain import acting, events
from computesdkd.domain.errors import Aborted
from computesdkd.domain.model import Event
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

# A subscriber that falls this far behind is cut off; it can resume by sequence.
QUEUE_LIMIT = 10_000


class _Subscriber:
    def __init__(self, sandbox_ids: Collection[str], types: Collection[str]) -> None:
        self.sandbox_ids = frozenset(sandbox_ids)
        self.types = frozenset(types)
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.overflowed = False

    def wants(self, ev: Event) -> bool:
        return (not self.sandbox_ids or ev.sandbox_id in self.sandbox_ids) and (
            not self.types or ev.type in self.types
        )


class EventBus:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._subs: set[_Subscriber] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def emit(self, sandbox_id: str, type_: str, message: str = "", **attributes: str) -> Event:
        if not sandbox_id and type_ != events.CIRCUIT and acting.tenant():
            # Of no sandbox (a volume's, a template's): whose it is goes with it.
            attributes["tenant"] = acting.tenant()
        now = time.time()
        seq = self._store.events.append(now, sandbox_id, type_, message, attributes)
        ev = Event(seq, now, sandbox_id, type_, message, dict(attributes))
        detail = {"detail": message} if message else {}
        # Process starts and exits come with every command: at info they would be
        # most of the log (and a tenth of an exec's cost); they stay in the event log.
        say = log.debug if type_.startswith("process.") else log.info
        say(f"event {type_}", sandbox_id=sandbox_id, seq=seq, **attributes, **detail)
        for sub in list(self._subs):
            if not sub.wants(ev):
                continue
            if sub.queue.qsize() >= QUEUE_LIMIT:
                sub.overflowed = True
                sub.queue.put_nowait(None)
                self._subs.discard(sub)
            else:
                sub.queue.put_nowait(ev)
        return ev

    def close(self) -> None:
        """Ends every live subscription cleanly (graceful shutdown)."""
        self._closed = True
        for sub in self._subs:
            sub.queue.put_nowait(None)
        self._subs.clear()

    async def subscribe(
        self,
        after: int = 0,
        sandbox_ids: Collection[str] = (),
        types: Collection[str] = (),
        follow: bool = True,
    ) -> AsyncIterator[Event]:
        sub = _Subscriber(sandbox_ids, types)
        # Register before reading the backlog so nothing emitted in between is missed.
        if follow and not self._closed:
            self._subs.add(sub)
        try:
            last = after
            while True:
                batch = self._store.events.after(last, sub.sandbox_ids)
                for ev in batch:
                    last = ev.sequence
                    if sub.wants(ev):
                        yield ev
                if len(batch) < 1000:
                    break
            if not follow or self._closed:
                return
            while True:
                item = await sub.queue.get()
                if item is None:
                    if sub.overflowed:
                        raise Aborted(
                            f"subscriber fell behind; resume after sequence {last}",
                            reason="EVENTS_OVERFLOW",
                            last_sequence=str(last),
                        )
                    return
                if item.sequence > last:
                    last = item.sequence
                    yield item
        finally:
            self._subs.discard(sub)
