"""Resource sampling: one-off samples, shared samplers for Monitor streams, and
alerts with hysteresis.

A sampler belongs to a (sandbox, interval) pair; every subscriber at that pace
shares it, and it stops when its last subscriber leaves. CPU percent comes
from the difference of two cumulative CPU-time readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from computesdkd.domain.model import Usage
from computesdkd.support import logs, metrics

log = logs.get(__name__)

MIN_INTERVAL_S = 0.1
# A one-off sample needs two CPU readings this far apart when no recent one exists.
CPU_WINDOW_S = 0.2
ALERT = "resourceAlert"

SampleFn = Callable[[], Awaitable[Usage]]


def with_cpu_percent(prev: Usage | None, cur: Usage) -> Usage:
    if prev is None or cur.sample_time <= prev.sample_time:
        return cur
    busy_ns = max(0, cur.cpu_time_ns - prev.cpu_time_ns)
    wall_ns = (cur.sample_time - prev.sample_time) * 1e9
    return replace(cur, cpu_percent=round(100.0 * busy_ns / wall_ns, 1))


class _Sampler:
    def __init__(self, key: tuple[str, float], sample: SampleFn) -> None:
        self.key = key
        self.sample = sample
        self.queues: set[asyncio.Queue[Usage | BaseException]] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        prev: Usage | None = None
        interval = self.key[1]
        while True:
            started = time.monotonic()
            try:
                cur = await self.sample()
                cur = with_cpu_percent(prev, replace(cur, sample_time=time.time()))
                prev = cur
                item: Usage | BaseException = cur
            except Exception as exc:  # the sandbox went away: tell subscribers, stop
                item = exc
            for q in list(self.queues):
                if q.qsize() < 100:  # a stalled subscriber loses samples, not memory
                    q.put_nowait(item)
            if isinstance(item, BaseException):
                return
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


@dataclass
class _Alert:
    type: str
    percent: float
    clear_percent: float
    fired: bool = False


class Monitor:
    def __init__(self, emit: Callable[..., object]) -> None:
        self._emit = emit
        self._samplers: dict[tuple[str, float], _Sampler] = {}
        self._last: dict[str, Usage] = {}
        self._alert_tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def sampler_count(self) -> int:
        return len(self._samplers)

    async def sample_once(self, sandbox_id: str, sample: SampleFn) -> Usage:
        prev = self._last.get(sandbox_id)
        if prev is None or time.time() - prev.sample_time > 5:
            prev = replace(await sample(), sample_time=time.time())
            await asyncio.sleep(CPU_WINDOW_S)
        cur = with_cpu_percent(prev, replace(await sample(), sample_time=time.time()))
        self._last[sandbox_id] = cur
        return cur

    async def subscribe(
        self, sandbox_id: str, interval_s: float, sample: SampleFn
    ) -> AsyncIterator[Usage]:
        key = (sandbox_id, max(MIN_INTERVAL_S, interval_s))
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = self._samplers[key] = _Sampler(key, sample)
            sampler.task = asyncio.create_task(sampler.run())
            metrics.SAMPLERS.set(len(self._samplers))
        queue: asyncio.Queue[Usage | BaseException] = asyncio.Queue()
        sampler.queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                self._last[sandbox_id] = item
                yield item
        finally:
            sampler.queues.discard(queue)
            if not sampler.queues:
                if sampler.task is not None:
                    sampler.task.cancel()
                self._samplers.pop(key, None)
                metrics.SAMPLERS.set(len(self._samplers))

    # ------------------------------------------------------------ alerts

    def set_alerts(
        self,
        sandbox_id: str,
        thresholds: list[tuple[str, float, float]],
        interval_s: float,
        cpu_cores: float,
        sample: SampleFn,
    ) -> None:
        old = self._alert_tasks.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        if not thresholds:
            return
        alerts = [_Alert(t, p, c) for t, p, c in thresholds]
        self._alert_tasks[sandbox_id] = asyncio.create_task(
            self._watch_alerts(sandbox_id, alerts, interval_s, cpu_cores, sample)
        )

    async def _watch_alerts(
        self,
        sandbox_id: str,
        alerts: list[_Alert],
        interval_s: float,
        cpu_cores: float,
        sample: SampleFn,
    ) -> None:
        with contextlib.suppress(Exception):
            async for usage in self.subscribe(sandbox_id, interval_s, sample):
                for a in alerts:
                    current = _percent(a.type, usage, cpu_cores)
                    if current is None:
                        continue
                    if not a.fired and current >= a.percent:
                        a.fired = True  # once per crossing: re-armed below clear_percent
                        self._emit(
                            sandbox_id,
                            ALERT,
                            f"{a.type} usage is {current:.0f}% (threshold {a.percent:g}%)",
                            type=a.type,
                            current=f"{current:.1f}",
                            threshold=f"{a.percent:g}",
                        )
                    elif a.fired and current < a.clear_percent:
                        a.fired = False

    def forget(self, sandbox_id: str) -> None:
        task = self._alert_tasks.pop(sandbox_id, None)
        if task is not None:
            task.cancel()
        self._last.pop(sandbox_id, None)


def _percent(kind: str, u: Usage, cpu_cores: float) -> float | None:
    """Use as a percent of the limit; CPU against the cores the sandbox may use."""
    if kind == "memory" and u.memory_limit_bytes:
        return 100.0 * u.memory_used_bytes / u.memory_limit_bytes
    if kind == "disk" and u.disk_limit_bytes:
        return 100.0 * u.disk_used_bytes / u.disk_limit_bytes
    if kind == "cpu" and cpu_cores:
        return u.cpu_percent / cpu_cores
    return None
