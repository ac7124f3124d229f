"""The code the back ends share (providers/common): the retry policy over HTTP and
Modal's gRPC, and the scaffolding of a streamed foreground command."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from modal_proto import api_pb2

from computesdkd.domain.errors import InvalidArgument, Unavailable, Unsupported
from computesdkd.domain.model import Command, ExitStatus, Output, ProcessEvent, Started
from computesdkd.providers.common import http, retry
from computesdkd.providers.common.run import StreamedRun
from computesdkd.providers.modal.api import ModalAPI
from fakes import modal as modal_fake
from fakes.modal import FakeModal, GrpcServerThread


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "_backoff", lambda _state: 0.0)


def _vendor(*answers: httpx.Response | Exception) -> tuple[httpx.AsyncClient, list[str]]:
    """A client whose vendor gives these answers in turn, and the log of requests."""
    seen: list[str] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handle)), seen


async def _send(client: httpx.AsyncClient, method: str, **kw: Any) -> httpx.Response:
    return await http.send(client, method, "http://vendor/x", provider="v", what="call", **kw)


async def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    assert http.retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    after = http.retry_after(httpx.Response(503, headers={"Retry-After": when}))
    assert after is not None and 28 < after <= 30
    assert http.retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert http.retry_after(httpx.Response(503)) is None

    client, seen = _vendor(
        httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, json={})
    )
    started = time.monotonic()
    assert (await _send(client, "GET")).status_code == 200
    assert seen == ["GET", "GET"] and time.monotonic() - started >= 1.0


async def test_only_idempotent_calls_are_retried_after_the_vendor_may_have_acted(
    no_backoff: None,
) -> None:
    client, seen = _vendor(*[httpx.Response(502)] * 4)
    with pytest.raises(Unavailable):
        await _send(client, "GET")
    assert seen == ["GET"] * retry.ATTEMPTS
    client, seen = _vendor(httpx.Response(502))
    with pytest.raises(Unavailable):
        await _send(client, "POST")
    assert seen == ["POST"]
    client, seen = _vendor(httpx.Response(502), httpx.Response(200))
    await _send(client, "POST", idempotent=True)
    assert seen == ["POST", "POST"]
    # Turned away, or never sent: nothing was done, so any call goes again.
    client, seen = _vendor(httpx.Response(429), httpx.ConnectError("refused"), httpx.Response(201))
    assert (await _send(client, "POST")).status_code == 201
    assert seen == ["POST"] * 3
    client, seen = _vendor(httpx.ReadError("reset"))
    with pytest.raises(Unavailable) as broken:
        await _send(client, "POST")
    assert broken.value.message == "v: call: ReadError" and seen == ["POST"]


async def test_a_rejection_is_not_retried_and_a_streamed_body_is_sent_once(
    no_backoff: None,
) -> None:
    client, seen = _vendor(httpx.Response(400, json={"message": "bad field"}))
    with pytest.raises(InvalidArgument) as bad:
        await _send(client, "GET")
    assert "bad field" in bad.value.message and seen == ["GET"]

    async def body() -> AsyncIterator[bytes]:
        yield b"data"

    client, seen = _vendor(httpx.Response(503))
    with pytest.raises(Unavailable):
        await _send(client, "PUT", content=body())
    assert seen == ["PUT"]


async def test_a_hint_past_the_budget_ends_the_retries_at_once() -> None:
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        raise retry.Retryable(Unavailable("busy"), after_s=retry.TOTAL_S + 1)

    started = time.monotonic()
    with pytest.raises(Unavailable):
        await retry.call(attempt)
    # Well under the hint: no sleep was begun (even on a busy machine).
    assert tries == 1 and time.monotonic() - started < retry.TOTAL_S


@pytest.fixture
def modal_server() -> Iterator[tuple[FakeModal, ModalAPI]]:
    fake = FakeModal(daemon_socket="")  # ModalClient.AppGetOrCreate needs no sandbox
    server = GrpcServerThread(fake).start()
    api = ModalAPI(
        {
            "MODAL_TOKEN_ID": modal_fake.TOKEN_ID,
            "MODAL_TOKEN_SECRET": modal_fake.TOKEN_SECRET,
            "MODAL_SERVER_URL": f"http://127.0.0.1:{server.ports[0]}",
        }
    )
    yield fake, api
    server.stop()


async def _app(api: ModalAPI) -> str:
    resp = await api.call(
        "AppGetOrCreate",
        api_pb2.AppGetOrCreateRequest(app_name="computesdk"),
        api_pb2.AppGetOrCreateResponse,
        "app",
    )
    return str(resp.app_id)


async def test_modal_waits_as_its_server_asks_with_one_idempotency_key(
    modal_server: tuple[FakeModal, ModalAPI],
) -> None:
    fake, api = modal_server
    fake.throttle, fake.throttle_retry_after_s = 2, 0.3
    started = time.monotonic()
    try:
        assert await _app(api) == "ap-computesdk"
    finally:
        await api.close()
    assert time.monotonic() - started >= 0.6
    assert fake.requests == ["AppGetOrCreate"] * 3
    assert len(set(fake.idempotency_keys)) == 1 and fake.idempotency_keys[0]


async def test_modal_gives_up_when_throttled_past_its_attempts(
    modal_server: tuple[FakeModal, ModalAPI],
) -> None:
    fake, api = modal_server
    fake.throttle, fake.throttle_retry_after_s = retry.ATTEMPTS, 0.0
    try:
        with pytest.raises(Unavailable) as e:
            await _app(api)
    finally:
        await api.close()
    assert e.value.reason == "PROVIDER_UNAVAILABLE" and "RESOURCE_EXHAUSTED" in e.value.message
    assert fake.requests == ["AppGetOrCreate"] * retry.ATTEMPTS


class _Run(StreamedRun):
    """A command that prints, then runs until it is killed or told to finish."""

    def __init__(self, command: Command, kill_on_close: bool = True) -> None:
        super().__init__("test", command, kill_on_close)
        self.kills = 0
        self.finish = asyncio.Event()

    async def _stream(self) -> AsyncIterator[ProcessEvent]:
        yield self.started_event("p1", 42)
        yield self.output("stdout", b"ab")
        yield self.output("stderr", b"x")
        yield self.output("stdout", b"cde")
        await self.finish.wait()
        yield self.exited(-1, 9) if self.kills else self.exited(0)

    async def _kill(self) -> None:
        self.kills += 1
        self.finish.set()

    async def send_signal(self, signal: int) -> None:
        await self._kill()


async def test_a_streamed_run_counts_offsets_and_kills_at_its_deadline() -> None:
    run = _Run(Command(args=["x"], timeout_ms=100))
    events = [ev async for ev in run.events()]
    assert events[0] == Started("p1", 42)
    assert events[1:4] == [
        Output("stdout", b"ab", 0),
        Output("stderr", b"x", 0),
        Output("stdout", b"cde", 2),
    ]
    end = events[4]
    assert isinstance(end, ExitStatus)
    assert (end.exit_code, end.signal, end.timed_out) == (-1, 9, True)
    assert end.duration_ms >= 100 and run.kills == 1
    await run.aclose()
    assert run.kills == 1  # it had ended: nothing to kill


async def test_a_streamed_run_left_early_is_killed_unless_asked_not_to() -> None:
    for kill_on_close, kills in ((True, 1), (False, 0)):
        run = _Run(Command(args=["x"]), kill_on_close)
        events = aiter(run.events())
        assert isinstance(await anext(events), Started)
        await run.aclose()
        assert run.kills == kills and not run.timed_out
        with pytest.raises(Unsupported):
            await run.send_stdin(b"no")
