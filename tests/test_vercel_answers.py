"""What Vercel answers is untrusted, and a bad answer fails the one call that got
it, by name: a create whose answer fails a check deletes what Vercel made (by
the name Vercel gave, or the one we asked for when that cannot go into a URL),
one bad entry of a listing does not stop the orphan sweep, and a caller's
template name is not echoed whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_vercel_contract import _fake, _provider, _sandbox

from computesdkd.domain.errors import ComputeError, NotFound
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.vercel.provider import VercelProvider
from conftest import DaemonProcess
from fakes import vercel as fake_mod

HOSTILE_ROUTE = [{"port": 3000, "subdomain": "evil.example/x?", "url": "https://x"}]


def _made_with(monkeypatch: pytest.MonkeyPatch, **attrs: Any) -> None:
    """The fake's next sandboxes answer with these attributes."""
    made = fake_mod._Box.__init__

    def init(self: fake_mod._Box, *args: Any, **kw: Any) -> None:
        made(self, *args, **kw)
        for name, value in attrs.items():
            setattr(self, name, value)

    monkeypatch.setattr(fake_mod._Box, "__init__", init)


def _named(monkeypatch: pytest.MonkeyPatch, name: str, when: str = "") -> None:
    """The fake's sandbox answers give this name (for the sandbox named when, or all)."""
    answer = fake_mod._Box.sandbox

    def sandbox(self: fake_mod._Box) -> dict[str, Any]:
        out = answer(self)
        return {**out, "name": name} if not when or self.name == when else out

    monkeypatch.setattr(fake_mod._Box, "sandbox", sandbox)


@pytest.mark.parametrize("bad", ["route", "name", "session"])
async def test_a_create_answer_that_fails_a_check_leaves_no_sandbox(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    fake = _fake(daemon)
    if bad == "route":
        _made_with(monkeypatch, routes=HOSTILE_ROUTE)
    elif bad == "name":
        _named(monkeypatch, "../../teams")
    else:
        _made_with(monkeypatch, vcpus="2")  # the session's vcpus is not a number
    p = _provider(daemon)
    await p.start(ProviderContext(tmp_path, emit=lambda *a, **k: None))
    sb = _sandbox(f"vc-bad-{bad}")
    sb.spec = replace(sb.spec, ports=(3000,))
    seen = len(fake.requests)
    try:
        with pytest.raises(ComputeError) as err:
            await p.create(sb)
    finally:
        await p.close()
    assert err.value.reason == "PROVIDER_ERROR"
    assert fake.requests[seen].startswith("POST /api/v3/sandboxes")  # Vercel made one
    assert f"computesdk-vc-bad-{bad}" not in fake.boxes  # and it was deleted
    assert any(
        r.startswith(f"DELETE /api/v2/sandboxes/computesdk-vc-bad-{bad}?")
        for r in fake.requests[seen:]
    )


async def test_one_bad_entry_does_not_stop_the_orphan_sweep(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake(daemon)
    p = _provider(daemon)
    await p.start(ProviderContext(tmp_path, emit=lambda *a, **k: None))
    orphans = [_sandbox(f"vc-orphan-{i}") for i in range(3)]
    try:
        for sb in orphans:
            await p.create(sb)
        # Vercel lists the newest first: the one in the middle has a name that
        # cannot go into a URL, between two that can.
        _named(monkeypatch, "../../teams", when="computesdk-vc-orphan-1")
        await p.reconcile(set())
        assert "computesdk-vc-orphan-0" not in fake.boxes
        assert "computesdk-vc-orphan-2" not in fake.boxes
        assert "computesdk-vc-orphan-1" in fake.boxes  # it could not be named, so it is left
    finally:
        monkeypatch.undo()
        for sb in orphans:
            await p.destroy(sb)
        await p.close()


def test_a_template_name_is_not_echoed_whole() -> None:
    env = {"VERCEL_TOKEN": "t", "VERCEL_TEAM_ID": "team", "VERCEL_PROJECT_ID": "prj"}
    p = VercelProvider(ProviderConfig("vercel", env=env))
    sb = _sandbox("vc-tpl")
    sb.spec = replace(sb.spec, template="t" * 100_000)
    with pytest.raises(NotFound) as err:
        p._body(sb)
    assert err.value.reason == "TEMPLATE_NOT_FOUND"
    assert "t" * 200 in err.value.message and "t" * 201 not in err.value.message
    assert len(err.value.message) < 400
