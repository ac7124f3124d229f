"""What E2B answers is untrusted, and a bad answer fails the one call that got it,
by name: it leaks no sandbox (a create whose answer fails a check kills what
E2B made), stops no sweep (one bad entry of a listing is skipped), and is never
a crash outside the domain's errors (a 200 that is not JSON is PROVIDER_ERROR,
which lifecycle.adopt and the sweep handle)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from test_e2b_contract import _provider, _record

from computesdkd.domain.errors import ComputeError
from computesdkd.domain.model import Sandbox as DomainSandbox
from computesdkd.providers.base import ProviderConfig, ProviderContext
from computesdkd.providers.e2b.api import E2BAPI
from computesdkd.providers.e2b.provider import E2BProvider
from conftest import DaemonProcess
from fakes.e2b import Box, FakeE2B


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"domain": "evil.example/../x"}, id="domain"),
        pytest.param({"domain": "a" * 300}, id="long-domain"),
        pytest.param({"domain": 42}, id="domain-not-text"),
    ],
)
async def test_a_create_answer_that_fails_a_check_leaves_no_sandbox(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: dict[str, object]
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    made = Box.sandbox
    monkeypatch.setattr(Box, "sandbox", lambda self: {**made(self), **bad})
    p = _provider(daemon, tmp_path)
    before, seen = set(fake.boxes), len(fake.requests)
    try:
        with pytest.raises(ComputeError) as err:
            await p.create(_record("bad-answer", keep_alive=False))
    finally:
        await p.close()
    assert err.value.reason == "PROVIDER_ERROR" and "domain" in err.value.message
    calls = fake.requests[seen:]
    assert calls[0] == "POST /v2/sandboxes"  # E2B made one
    assert set(fake.boxes) == before  # and it was killed by its id
    assert any(c.startswith("DELETE /sandboxes/") for c in calls)


async def test_one_bad_entry_does_not_stop_the_orphan_sweep(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake: FakeE2B = daemon.fakes["e2b"]
    p = _provider(daemon, tmp_path)
    await p.start(ProviderContext(state_dir=tmp_path, emit=lambda *a, **k: None))
    owner = (tmp_path / "e2b-owner").read_text().strip()
    key = {"X-API-Key": daemon.env["E2B_API_KEY"]}
    made = []
    async with httpx.AsyncClient(base_url=daemon.env["E2B_API_URL"], headers=key) as http:
        for record in ("gone-1", "gone-2", "gone-3"):
            meta = {"computesdk_daemon": owner, "computesdk_id": record}
            body = {"templateID": "base", "timeout": 120, "metadata": meta}
            made.append((await http.post("/v2/sandboxes", json=body)).json()["sandboxID"])
        # E2B lists the newest first: the one in the middle is listed with an id
        # that cannot go into a URL, between two that can.
        listed = Box.listed
        monkeypatch.setattr(
            Box,
            "listed",
            lambda self: (
                {**listed(self), "sandboxID": "../teams"} if self.id == made[1] else listed(self)
            ),
        )
        try:
            await p.reconcile(set())
            assert made[0] not in fake.boxes and made[2] not in fake.boxes
            assert made[1] in fake.boxes  # it could not be named, so it is left
        finally:
            for sid in made:
                await http.delete(f"/sandboxes/{sid}")
            await p.close()


def _answering(status: int, body: bytes) -> E2BProvider:
    """A provider whose every REST call gets this answer."""
    api = E2BAPI({"E2B_API_KEY": "k", "E2B_API_URL": "http://e2b.invalid"})
    transport = api.http._transport
    transport._inner = httpx.MockTransport(  # type: ignore[attr-defined]
        lambda req: httpx.Response(status, content=body, headers={"Content-Type": "text/html"})
    )
    p = E2BProvider(ProviderConfig(name="e2b", env={"E2B_API_KEY": "k"}))
    p._api = api
    p._owner = "0" * 32
    return p


def _created() -> DomainSandbox:
    sb = _record("not-json")
    sb.provider_sandbox_id = "iabc123"
    sb.provider_data = {"domain": "e2b.app", "access_token": "t"}
    return sb


CALLS: dict[str, Callable[[E2BProvider], Awaitable[object]]] = {
    "probe": lambda p: p.probe(_created()),
    "adopt": lambda p: p.adopt(_created()),
    "usage": lambda p: p.usage(_created()),
    "reconcile": lambda p: p.reconcile(set()),
    "create": lambda p: p.create(_record("not-json", keep_alive=False)),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("body", [b"<html>hello</html>", b"\xff\xfe\x00", b'{"cut": '])
async def test_a_200_that_is_not_json_is_a_provider_error(call: str, body: bytes) -> None:
    p = _answering(201 if call == "create" else 200, body)
    try:
        with pytest.raises(ComputeError) as err:
            await CALLS[call](p)
    finally:
        await p.close()
    assert err.value.reason == "PROVIDER_ERROR" and "not JSON" in err.value.message
