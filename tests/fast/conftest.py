"""In-process tests of the core and the features on the fake provider: no root, no
runc, no daemon process, so each runs in milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computesdkd.app import App
from computesdkd.domain.model import Resources, SandboxSpec
from computesdkd.providers.fake import FakeProvider
from computesdkd.store import Store


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {
        "provider": "fake",
        "template": "base",
        "metadata": {},
        "timeout_ms": 60_000,
        "keep_alive": False,
        "resources": Resources(),
        "env": {},
    }
    return SandboxSpec(**{**base, **kw})  # type: ignore[arg-type]


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fake = FakeProvider("fake")
        self.backup = FakeProvider("backup")
        self.store = Store(tmp / "state.db")
        self.app = App(tmp, self.store, {"fake": self.fake, "backup": self.backup}, "fake")

    def events(self, sandbox_id: str = "") -> list[str]:
        return [ev.type for ev in self.store.events.after(0, {sandbox_id} if sandbox_id else set())]

    async def restart(self) -> App:
        """A new App on the same state dir and providers: a daemon restart."""
        await self.app.shutdown(destroy=False)
        self.store.close()
        self.store = Store(self.tmp / "state.db")
        self.app = App(self.tmp, self.store, {"fake": self.fake, "backup": self.backup}, "fake")
        await self.app.start()
        return self.app


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.app.start()
    try:
        yield harness
    finally:
        await harness.app.shutdown(destroy=True)
        harness.store.close()
