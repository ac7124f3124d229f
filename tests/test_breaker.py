"""A provider that fails opens its circuit; create falls back; others keep serving."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from computesdk import Client, UnavailableError
from computesdkd.core.breaker import Circuit, CircuitBreaker
from computesdkd.domain.errors import InvalidArgument, Unavailable
from conftest import DaemonProcess, new_daemon, start_e2b_fake
from fakes.e2b import FakeE2B


class _Always503(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"message": "engine is down"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler wants a host, port pair


@pytest_asyncio.fixture
async def daemon_with_dead_docker() -> AsyncIterator[DaemonProcess]:
    d = new_daemon()
    server = _UnixHTTPServer(str(d.root / "docker.sock"), _Always503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    d.env = {"DOCKER_HOST": f"unix://{d.root / 'docker.sock'}"}
    d.start()
    yield d
    d.cleanup()
    server.shutdown()
    server.server_close()


async def test_dead_provider_opens_its_circuit_and_create_falls_back(
    daemon_with_dead_docker: DaemonProcess,
) -> None:
    client = await Client.connect(socket=daemon_with_dead_docker.socket)
    circuit_events = []

    async def watch() -> None:
        async for ev in client.events(types=["provider.circuit"]):
            circuit_events.append(ev)

    watcher = asyncio.create_task(watch())
    for _ in range(5):
        with pytest.raises(UnavailableError) as e:
            await client.create("docker")
        assert e.value.reason == "PROVIDER_UNAVAILABLE"
        assert "docker" in e.value.message and "engine is down" in e.value.message
    # Open now: the next call fails without reaching the engine.
    with pytest.raises(UnavailableError) as fast:
        await client.create("docker")
    assert fast.value.reason == "CIRCUIT_OPEN"
    provs = {p.name: p for p in await client.providers()}
    assert provs["docker"].circuit_state == Circuit.OPEN
    assert provs["local"].circuit_state == Circuit.CLOSED
    # Falling back: the sandbox lands on the next provider, which keeps serving.
    sb = await client.create("docker", fallback_providers=["local"])
    assert sb.provider == "local"
    assert (await sb.exec("echo fine")).stdout == "fine\n"
    await sb.destroy()
    await asyncio.sleep(0.1)
    watcher.cancel()
    assert [(e.attributes["provider"], e.attributes["state"]) for e in circuit_events] == [
        ("docker", "open")
    ]
    # Every tenant gets this event: it says why by reason, never by the last call's
    # own text (a vendor's message, another tenant's sandbox).
    assert circuit_events[0].message == "5 consecutive failures (PROVIDER_UNAVAILABLE)"
    await client.close()


def test_breaker_half_opens_after_the_reset_timeout() -> None:
    changes: list[tuple[Circuit, str]] = []
    b = CircuitBreaker(
        "p", lambda _p, state, why: changes.append((state, why)), threshold=2, reset_after_s=0.05
    )
    down = Unavailable("down", reason="PROVIDER_UNAVAILABLE")
    for _ in range(2):
        b.before_call()
        b.record(down)
    assert b.state == Circuit.OPEN
    with pytest.raises(Unavailable):
        b.before_call()
    time.sleep(0.06)
    b.before_call()  # the one trial call
    assert b.state == Circuit.HALF_OPEN
    with pytest.raises(Unavailable):
        b.before_call()  # only one trial at a time
    b.record(down)
    assert b.state == Circuit.OPEN
    time.sleep(0.06)
    b.before_call()
    b.record(None)
    assert b.state == Circuit.CLOSED
    # A bad request is the caller's fault, not the provider's: it never opens the circuit.
    for _ in range(5):
        b.before_call()
        b.record(InvalidArgument("bad"))
    assert b.state == Circuit.CLOSED
    assert [s for s, _ in changes] == [
        Circuit.OPEN,
        Circuit.HALF_OPEN,
        Circuit.OPEN,
        Circuit.HALF_OPEN,
        Circuit.CLOSED,
    ]


@pytest_asyncio.fixture
async def daemon_with_failing_e2b() -> AsyncIterator[tuple[DaemonProcess, FakeE2B]]:
    d = new_daemon()
    fake, servers = start_e2b_fake(d)
    fake.fail_with = 503
    d.start()
    yield d, fake
    d.cleanup()
    servers.stop()


async def test_e2b_answering_503_opens_the_circuit_and_others_keep_serving(
    daemon_with_failing_e2b: tuple[DaemonProcess, FakeE2B],
) -> None:
    d, fake = daemon_with_failing_e2b
    client = await Client.connect(socket=d.socket)
    for _ in range(5):
        with pytest.raises(UnavailableError) as e:
            await client.create("e2b")
        assert e.value.reason == "PROVIDER_UNAVAILABLE" and "503" in e.value.message
    # Each failed create was retried with backoff before counting as one failure.
    assert fake.requests.count("POST /v2/sandboxes") == 5 * 4
    with pytest.raises(UnavailableError) as fast:
        await client.create("e2b")
    assert fast.value.reason == "CIRCUIT_OPEN"
    assert fake.requests.count("POST /v2/sandboxes") == 20  # the open circuit did not call out
    sb = await client.create("e2b", fallback_providers=["docker", "local"])
    assert sb.provider == "docker"
    assert (await sb.exec("echo served")).stdout == "served\n"
    await sb.destroy()
    other = await client.create("local")
    assert (await other.exec("echo local")).stdout == "local\n"
    await other.destroy()
    await client.close()
