"""The network listener: TLS with certificates the test makes, bearer tokens and
their failures, scopes, revocation without a restart, mTLS, and the refusal of
plaintext off loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pki import CA, Pair

from computesdk import Client
from computesdk.admin import Quota
from computesdk.errors import ComputeSDKError
from computesdk_api.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from conftest import BIN, DaemonProcess, new_daemon, serving_port


@dataclass
class Net:
    daemon: DaemonProcess
    admin: Client
    address: str
    ca: CA
    client_pair: Pair | None = None

    async def token(self, tenant: str, scope: str = "write", ttl: int = 0) -> str:
        _, secret = await self.admin.admin.create_token(tenant, scope, ttl_seconds=ttl)
        return secret

    async def connect(self, token: str | None, **kw: object) -> Client:
        opts: dict[str, object] = {"address": self.address, "ca": str(self.ca.pem), "token": token}
        if self.client_pair is not None:
            opts.update(cert=str(self.client_pair.cert), key=str(self.client_pair.key))
        opts = {"timeout": 10, **opts, **kw}
        return await Client.connect(**opts)  # type: ignore[arg-type]


async def _start(mtls: bool) -> tuple[DaemonProcess, Net]:
    d = new_daemon()
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    d.extra_args = ["--listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    if mtls:
        d.extra_args += ["--tls-client-ca", str(ca.pem)]
    d.start()
    port = serving_port(d)
    admin = await Client.connect(socket=d.socket)
    net = Net(d, admin, f"127.0.0.1:{port}", ca, ca.issue("client", server=False) if mtls else None)
    return d, net


@pytest_asyncio.fixture(scope="module")
async def net() -> AsyncIterator[Net]:
    d, n = await _start(mtls=False)
    try:
        yield n
    finally:
        await n.admin.close()
        d.cleanup()


async def _reason(coro: object) -> tuple[str, str]:
    with pytest.raises(ComputeSDKError) as info:
        await coro  # type: ignore[misc]
    return info.value.code.name, info.value.reason


async def test_tls_with_a_token_serves(net: Net) -> None:
    c = await net.connect(await net.token("alpha"))
    try:
        sb = await c.create("local")
        result = await sb.exec(["echo", "over tls"])
        assert result.stdout == "over tls\n"
        await sb.destroy()
    finally:
        await c.close()


async def test_plaintext_to_the_tls_port_is_refused(net: Net) -> None:
    channel = grpc.aio.insecure_channel(net.address)
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListSandboxes(sandbox_pb2.ListSandboxesRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_a_server_cert_from_another_ca_is_not_trusted(net: Net, tmp_path: Path) -> None:
    other = CA(tmp_path, "other-ca")
    with pytest.raises(ComputeSDKError) as info:
        await net.connect(await net.token("alpha"), ca=str(other.pem))
    assert info.value.reason == "DAEMON_UNREACHABLE"


async def test_each_bad_token_has_its_reason(net: Net) -> None:
    good = await net.token("alpha")
    expiring = await net.token("alpha", ttl=1)
    token_id = good.split("_")[1]
    cases = {
        "TOKEN_MISSING": None,
        "TOKEN_INVALID": good[:-4] + "AAAA",
        "TOKEN_EXPIRED": expiring,
    }
    await asyncio.sleep(1.2)
    for reason, token in cases.items():
        c = await net.connect(token)
        try:
            assert await _reason(c.list()) == ("UNAUTHENTICATED", reason)
        finally:
            await c.close()
    c = await net.connect(good)
    try:
        assert await c.list() == []
        # Revoked: the very next call on the same connection is refused, no restart.
        await net.admin.admin.revoke_token(token_id)
        assert await _reason(c.list()) == ("UNAUTHENTICATED", "TOKEN_REVOKED")
    finally:
        await c.close()
    # A header that is not a bearer token, and a long one, are refused the same way,
    # without an echo. (grpc itself refuses metadata past 8 KiB.)
    channel = grpc.aio.secure_channel(
        net.address, grpc.ssl_channel_credentials(net.ca.pem.read_bytes())
    )
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    for header in ("Basic abc", "Bearer " + "x" * 4_000):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListSandboxes(
                sandbox_pb2.ListSandboxesRequest(), metadata=[("authorization", header)]
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(info.value.details() or "") < 200
    await channel.close()


async def test_scopes(net: Net) -> None:
    writer = await net.connect(await net.token("scoped", "write"))
    reader = await net.connect(await net.token("scoped", "read"))
    try:
        sb = await writer.create("local")
        assert [s.id for s in await reader.list()] == [sb.id]
        mine = await reader.get(sb.id)
        assert await _reason(mine.exec(["true"])) == ("PERMISSION_DENIED", "SCOPE_INSUFFICIENT")
        assert await _reason(reader.create("local")) == ("PERMISSION_DENIED", "SCOPE_INSUFFICIENT")
        # Tokens are an admin-scope matter, and a write token is not one.
        assert await _reason(writer.admin.create_token("scoped")) == (
            "PERMISSION_DENIED",
            "SCOPE_INSUFFICIENT",
        )
        await sb.destroy()
    finally:
        await writer.close()
        await reader.close()


async def test_an_admin_token_reaches_its_own_tenant_only(net: Net) -> None:
    c = await net.connect(await net.token("own", "admin"))
    try:
        token, secret = await c.admin.create_token("own", "read")
        assert token.tenant == "own" and secret.startswith("csk_")
        assert await _reason(c.admin.create_token("someone-else")) == (
            "PERMISSION_DENIED",
            "SCOPE_INSUFFICIENT",
        )
        assert {t.tenant for t in await c.admin.list_tokens()} == {"own"}
        other = (await net.admin.admin.list_tokens("alpha"))[0]
        assert await _reason(c.admin.revoke_token(other.id)) == ("NOT_FOUND", "TOKEN_NOT_FOUND")
        assert await _reason(c.admin.set_quota("own", Quota(1))) == (
            "PERMISSION_DENIED",
            "ADMIN_SOCKET_ONLY",
        )
    finally:
        await c.close()


async def test_secrets_are_stored_hashed(net: Net) -> None:
    secret = await net.token("hashed")
    net.daemon.stop()
    try:
        db = (net.daemon.state / "state.db").read_bytes()
        assert secret.encode() not in db
        assert secret.split("_", 2)[2].encode() not in db
        assert secret.split("_")[1].encode() in db  # the id is public
    finally:
        net.daemon.start()
        await asyncio.sleep(0)
    # A restarted daemon knows the token.
    port = serving_port(net.daemon)
    net.address = f"127.0.0.1:{port}"
    c = await net.connect(secret)
    try:
        assert await c.list() == []
    finally:
        await c.close()


async def test_mtls_refuses_a_client_cert_from_another_ca(tmp_path: Path) -> None:
    d, n = await _start(mtls=True)
    try:
        token = await n.token("mtls")
        c = await n.connect(token)
        assert await c.list() == []
        await c.close()
        other = CA(tmp_path, "rogue-ca").issue("client", server=False)
        for pair in (other, None):
            kw = {"cert": str(pair.cert), "key": str(pair.key)} if pair else {}
            n.client_pair = None
            with pytest.raises(ComputeSDKError) as info:
                await n.connect(token, timeout=3, **kw)
            assert info.value.reason == "DAEMON_UNREACHABLE"
    finally:
        await n.admin.close()
        d.cleanup()


def test_plaintext_off_loopback_is_refused_unless_asked() -> None:
    d = new_daemon()
    try:
        argv = [str(BIN / "computesdkd"), "--socket", str(d.socket), "--state-dir", str(d.state),
                "--listen", "0.0.0.0:0"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert "not loopback" in out.stderr and "--insecure-listen" in out.stderr
    finally:
        d.cleanup()


async def test_loopback_plaintext_still_needs_a_token() -> None:
    d = new_daemon()
    d.extra_args = ["--listen", "127.0.0.1:0"]
    d.start()
    try:
        address = f"127.0.0.1:{serving_port(d)}"
        c = await Client.connect(address=address, insecure=True)
        assert await _reason(c.list()) == ("UNAUTHENTICATED", "TOKEN_MISSING")
        await c.close()
        admin = await Client.connect(socket=d.socket)
        _, secret = await admin.admin.create_token("plain")
        await admin.close()
        c = await Client.connect(address=address, insecure=True, token=secret)
        assert await c.list() == []
        await c.close()
    finally:
        d.cleanup()


async def test_rotation_without_restart(net: Net) -> None:
    old = await net.token("rotating")
    c_old = await net.connect(old)
    sb = await c_old.create("local")
    new = await net.token("rotating")
    await net.admin.admin.revoke_token(old.split("_")[1])
    c_new = await net.connect(new)
    try:
        assert [s.id for s in await c_new.list()] == [sb.id]  # the same tenant's
        assert await _reason(c_old.list()) == ("UNAUTHENTICATED", "TOKEN_REVOKED")
        await (await c_new.get(sb.id)).destroy()
    finally:
        await c_old.close()
        await c_new.close()


async def test_quota_holds_under_a_burst_of_50_creates(net: Net) -> None:
    await net.admin.admin.set_quota("bursty", Quota(max_sandboxes=5, max_memory_mb=8192))
    c = await net.connect(await net.token("bursty"))
    try:
        results = await asyncio.gather(
            *(c.create("local") for _ in range(50)), return_exceptions=True
        )
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ComputeSDKError)]
        assert len(made) == 5 and len(refused) == 45, results
        assert {(e.code.name, e.reason) for e in refused} == {
            ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        }
        usage = await net.admin.admin.get_quota("bursty")
        assert usage.sandboxes == 5
        for sb in made:
            await sb.destroy()
        assert (await c.create("local")) is not None  # room again once they are gone
    finally:
        for sb in await c.list():
            await sb.destroy()
        await c.close()


async def test_creates_per_second_under_a_burst_of_50(net: Net) -> None:
    await net.admin.admin.set_quota("ratey", Quota(creates_per_second=2))
    token = await net.token("ratey")
    c = await net.connect(token)
    channel = grpc.aio.secure_channel(
        net.address, grpc.ssl_channel_credentials(net.ca.pem.read_bytes())
    )
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(c.create("local") for _ in range(50)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ComputeSDKError)]
        # A bucket of 2, refilled at 2 a second while the burst lasted.
        assert 1 <= len(made) <= 2 + int(2 * elapsed) + 1, (len(made), elapsed)
        assert refused and {e.reason for e in refused} == {"RATE_LIMITED"}
        # The refusal says when to come back (google.rpc.RetryInfo).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            for _ in range(5):
                await stub.CreateSandbox(
                    sandbox_pb2.CreateSandboxRequest(provider="local"),
                    metadata=[("authorization", f"Bearer {token}")],
                )
        status = rpc_status.from_call(info.value)
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry
        delay = error_details_pb2.RetryInfo()
        retry[0].Unpack(delay)
        assert 0 < delay.retry_delay.ToTimedelta().total_seconds() <= 1
    finally:
        await channel.close()
        for sb in await c.list():
            await sb.destroy()
        await c.close()


ECHO = """
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""), headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


async def test_a_tenants_exposed_port_needs_its_secret(net: Net) -> None:
    c = await net.connect(await net.token("web"))
    try:
        sb = await c.create("local", template="python")
        await sb.start_process(["python3", "-c", ECHO])
        url = await sb.get_url(8080)  # a URL before the server listens
        base, _, secret = url.rpartition("/_csk/")
        assert secret and base.startswith("http://127.0.0.1:")

        for _ in range(100):  # until the server listens, a connection is closed
            try:
                status, _, body = await asyncio.to_thread(_http, url + "/app?x=1")
                break
            except (ConnectionError, OSError, http.client.HTTPException):
                await asyncio.sleep(0.1)
        assert status == 200
        seen = json.loads(body)
        assert seen["path"] == "/app?x=1"
        assert secret not in body.decode()  # the sandbox never sees the secret

        for bad in (base + "/app", base + "/_csk/wrong/app", base + f"/_csk/{secret[:-1]}/app"):
            assert (await asyncio.to_thread(_http, bad))[0] == 403, bad
        status, _, body = await asyncio.to_thread(
            _http, base + "/h", {"X-Computesdk-Secret": secret, "X-Other": "1"}
        )
        assert status == 200 and secret not in body.decode()
        assert json.loads(body)["headers"].get("X-Other") == "1"

        # A browser opening the URL gets a cookie, so the page's own links work.
        status, headers, _ = await asyncio.to_thread(
            _http, url + "/", {"Sec-Fetch-Mode": "navigate"}
        )
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"].split(";")[0]
        port = base.rsplit(":", 1)[1]
        assert cookie.startswith(f"csk_secret_{port}=") and "HttpOnly" in headers["set-cookie"]
        other_port = "csk_secret_1=some-other-ports-secret"
        status, _, body = await asyncio.to_thread(
            _http, base + "/asset.js", {"Cookie": f"theirs=1; {other_port}; {cookie}"}
        )
        assert status == 200
        # Neither this port's secret nor another port's reaches the sandbox.
        assert json.loads(body)["headers"].get("Cookie") == "theirs=1"
        assert json.loads(body)["headers"].get("Connection") == "close"

        # One request per connection: a second, pipelined one never reaches the
        # sandbox (it could carry another port's cookie), and chunked bodies are
        # refused rather than framed twice.
        import socket as socketlib

        host, hport = base.removeprefix("http://").split(":")
        with socketlib.create_connection((host, int(hport)), timeout=10) as raw:
            raw.sendall(
                f"GET /_csk/{secret}/one HTTP/1.1\r\nHost: x\r\n\r\n"
                f"GET /two HTTP/1.1\r\nHost: x\r\nCookie: {other_port}\r\n\r\n".encode()
            )
            got = b""
            while chunk := raw.recv(65536):
                got += chunk
        assert got.count(b"HTTP/1.") == 1 and b'"/one"' in got and b"/two" not in got
        status, _, _ = await asyncio.to_thread(_http, url + "/x", {"Transfer-Encoding": "chunked"})
        assert status == 411
        assert (await asyncio.to_thread(_http, f"{url}//evil.example/"))[0] == 400
        await sb.destroy()
    finally:
        await c.close()


def test_the_cli_over_tls_with_a_token(net: Net) -> None:
    token = asyncio.run(_token_via_cli(net))
    env = {
        **os.environ,
        "COMPUTESDK_ADDRESS": net.address,
        "COMPUTESDK_CA": str(net.ca.pem),
        "COMPUTESDK_TOKEN": token,
    }
    env.pop("COMPUTESDK_SOCKET", None)
    cli = str(BIN / "computesdk")

    def run(*args: str, **kw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, *args], capture_output=True, text=True, timeout=120, env={**env, **kw}
        )

    made = run("create", "--json")
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["id"]
    out = run("exec", sid, "--", "sh", "-c", "echo over-the-network; echo err >&2")
    assert out.returncode == 0 and out.stdout == "over-the-network\n" and out.stderr == "err\n"
    assert sid in run("ls").stdout
    refused = run("ls", COMPUTESDK_TOKEN="csk_nothing_here")
    assert refused.returncode != 0 and "TOKEN_INVALID" in refused.stderr
    assert token not in refused.stderr
    assert run("rm", sid).returncode == 0


async def _token_via_cli(net: Net) -> str:
    out = subprocess.run(
        [str(BIN / "computesdk"), "--socket", str(net.daemon.socket), "token", "create",
         "--tenant", "cli-user", "--scope", "write", "--expires", "1h"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("csk_") and "\n" not in token
    listed = subprocess.run(
        [str(BIN / "computesdk"), "--socket", str(net.daemon.socket), "token", "ls", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rows = json.loads(listed.stdout)
    assert any(r["tenant"] == "cli-user" and r["expires"] for r in rows)
    assert token not in listed.stdout
    return token


async def test_a_client_certificate_can_stand_for_a_token(tmp_path: Path) -> None:
    d, n = await _start(mtls=True)
    try:
        alice = n.ca.issue("svc-alice", server=False)
        bob = n.ca.issue("svc-bob", server=False)
        token, secret = await n.admin.admin.create_token(
            "certs", "write", client_subject="svc-alice"
        )
        assert secret == "" and token.client_subject == "svc-alice"
        n.client_pair = alice
        c = await n.connect(None)
        sb = await c.create("local")
        assert [s.id for s in await c.list()] == [sb.id]
        n.client_pair = bob  # a good certificate that no token names
        other = await n.connect(None)
        assert await _reason(other.list()) == ("UNAUTHENTICATED", "TOKEN_MISSING")
        await other.close()
        # A bearer token still wins over the certificate when both come.
        _, beta = await n.admin.admin.create_token("beta")
        n.client_pair = alice
        with_token = await n.connect(beta)
        assert await with_token.list() == []
        await with_token.close()
        await n.admin.admin.revoke_token(token.id)
        assert await _reason(c.list()) == ("UNAUTHENTICATED", "TOKEN_REVOKED")
        await c.close()
        await (await n.admin.get(sb.id)).destroy()
    finally:
        await n.admin.close()
        d.cleanup()


async def test_one_audit_line_per_mutating_call(net: Net) -> None:
    token = await net.token("audited")
    c = await net.connect(token)
    try:
        sb = await c.create("local")
        await sb.exec(["true"])
        await c.list()  # a read: no line
        assert await _reason(c.get("sbx-00000000deadbeef")) == ("NOT_FOUND", "SANDBOX_NOT_FOUND")
        await _reason((await c.get(sb.id)).exec(["nonexistent-command"]))
        await sb.destroy()
    finally:
        await c.close()
    bad = await net.connect("csk_nothing_here")
    await _reason(bad.create("local"))
    await bad.close()
    lines = [line for line in net.daemon.log_lines() if line.get("event") == "audit"]
    mine = [line for line in lines if line.get("tenant") == "audited"]
    seen = [(line["method"], line["resource"], line["status"]) for line in mine]
    assert ("SandboxService/CreateSandbox", sb.id, "OK") in seen
    assert ("ProcessService/RunCommand", sb.id, "OK") in seen  # what exec() calls
    assert ("ProcessService/RunCommand", sb.id, "NOT_FOUND") in seen  # no such executable
    assert ("SandboxService/DestroySandbox", sb.id, "OK") in seen
    assert not any(m.startswith(("SandboxService/List", "SandboxService/Get")) for m, _, _ in seen)
    assert all(line["via"] == "network" and line["token_id"] for line in mine)
    refused = [
        line
        for line in lines
        if line["method"] == "SandboxService/CreateSandbox" and line["status"] == "UNAUTHENTICATED"
    ]
    assert refused and refused[-1]["reason"] == "TOKEN_INVALID" and refused[-1]["tenant"] is None
    assert token not in net.daemon.log.read_text()
