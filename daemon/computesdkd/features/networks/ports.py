"""Exposed ports: a host listener that forwards each connection to a sandbox's port.

The admin's (exposed over the Unix socket) listen on loopback and let in only
root and the daemon's own user: any local user can reach 127.0.0.1, and raw TCP
carries no credential. A tenant's (exposed over the network listener) listen
where --expose-host says and speak HTTP, one request per connection (the
sandbox's server is told Connection: close), and each request must carry the
port's secret: in the URL's first path segments (http://HOST:PORT/_csk/SECRET),
an X-Computesdk-Secret header, or the cookie (csk_secret_PORT) a browser is given
when it first opens the URL. Every form of the secret, and other ports' cookies,
are taken out before the request reaches the sandbox. A WebSocket upgrade, once
let in, becomes a tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field

from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import ComputeError, InvalidArgument, ResourceExhausted
from computesdkd.domain.model import Sandbox
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import Provider
from computesdkd.providers.capabilities import require
from computesdkd.support import logs

log = logs.get(__name__)

# Rows of /proc/net/tcp and tcp6 read to find the owner of a connection to an
# admin's port; past that the connection is refused (fail closed).
PROC_TCP_MAX_ROWS = 1 << 18
PREFIX = b"/_csk/"
HEADER = b"x-computesdk-secret"
COOKIE = b"csk_secret"  # and the port: csk_secret_<port>
# The head of a connection's first request: bounded, and in bounded time.
MAX_HEAD = 16 * 1024
HEAD_SECONDS = 10.0
# A header name, as HTTP has it (a token: no spaces, no separators).
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Connections one exposed port serves at once; past that they are closed.
MAX_CONNECTIONS = 256
# Host listeners per sandbox: each exposed port is one, made on request whether or
# not the sandbox listens there yet, so a caller must not get 65535 of them.
MAX_EXPOSED = 64


@dataclass
class Forward:
    server: asyncio.Server
    url: str
    secret: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Ports:
    def __init__(
        self, registry: Registry, providers: Providers, host: str = "", public_host: str = ""
    ) -> None:
        self._registry = registry
        self._providers = providers
        # Where a tenant's ports listen, and the name their URLs give.
        self._host = host or "127.0.0.1"
        self._public_host = public_host or self._host
        self._forwards: dict[tuple[str, int, bool], Forward] = {}

    async def expose(self, sandbox_id: str, port: int, gated: bool) -> str:
        """The URL of a host listener for the sandbox's port; gated: a tenant's."""
        if not 0 < port < 65536:
            raise InvalidArgument(f"bad port {port}", reason="INVALID_PORT")
        sb, provider = self._registry.running(sandbox_id)
        preview = provider.part(caps.PreviewUrls)
        if preview is not None:
            # A cloud sandbox's port is served by its vendor (E2B's and Daytona's
            # preview domains, Vercel's routes, Modal's tunnels): no hop through us.
            return await self._providers.guarded(provider, preview.preview_url(sb, port))
        key = (sandbox_id, port, gated)
        known = self._forwards.get(key)
        if known is not None:
            return known.url
        if sum(1 for sid, _, _ in self._forwards if sid == sandbox_id) >= MAX_EXPOSED:
            raise ResourceExhausted(
                f"a sandbox exposes at most {MAX_EXPOSED} ports", reason="RESOURCE_EXHAUSTED"
            )
        # A provider without forwarding fails now, naming itself. A port nothing
        # listens on yet is fine (E2B's getHost and ComputeSDK's getUrl give a URL
        # before the server starts): each connection is made when it comes.
        require(provider, caps.PortForwarding, "port forwarding")
        fwd: Forward
        secret = secrets.token_urlsafe(24) if gated else ""
        cookie = origin = b""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            fwd.tasks.add(task)
            try:
                if len(fwd.tasks) > MAX_CONNECTIONS:
                    return
                if gated:
                    passed = await _gate(reader, writer, secret.encode(), cookie, origin)
                    if passed is not None:
                        await _forward_one(provider, sb, port, reader, writer, passed)
                elif await _local(writer):
                    up_r, up_w = await require(
                        provider, caps.PortForwarding, "port forwarding"
                    ).open_port(sb, port)
                    await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            except (ComputeError, ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()
                fwd.tasks.discard(task)

        host = self._host if gated else "127.0.0.1"
        server = await asyncio.start_server(serve, host, 0)
        host_port = server.sockets[0].getsockname()[1]
        # Browsers keep cookies by host, not port: each port's cookie has its name.
        cookie = COOKIE + b"_" + str(host_port).encode()
        if key in self._forwards or self._registry.find(sandbox_id) is None:
            # Another call made it meanwhile, or the sandbox went: this one is not needed.
            server.close()
            if key in self._forwards:
                return self._forwards[key].url
            self._registry.running(sandbox_id)  # raises what a gone sandbox answers
        where = _url_host(self._public_host if gated else "127.0.0.1")
        origin = f"http://{where}:{host_port}".encode()
        url = origin.decode() + (f"/_csk/{secret}" if gated else "")
        fwd = Forward(server, url, secret)
        self._forwards[key] = fwd
        log.info("port exposed", sandbox_id=sandbox_id, port=port, host_port=host_port, gated=gated)
        return url

    def forget(self, sandbox_id: str) -> None:
        for key in [k for k in self._forwards if k[0] == sandbox_id]:
            _close(self._forwards.pop(key))

    def close(self) -> None:
        for fwd in self._forwards.values():
            _close(fwd)
        self._forwards.clear()


def _close(fwd: Forward) -> None:
    fwd.server.close()
    for t in fwd.tasks:
        t.cancel()


def _url_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


async def _local(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer is root or the daemon's user."""
    try:
        uid = await asyncio.to_thread(
            peer_uid, writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        )
    except OSError:
        uid = None
    if uid in (0, os.geteuid()):
        return True
    log.warning("refused a connection to an exposed port", peer_uid=-1 if uid is None else uid)
    return False


@dataclass(frozen=True)
class _Passed:
    head: bytes  # the request line and headers, as the sandbox gets them
    body: int  # Content-Length: the bytes of the body that follow
    upgrade: bool  # a protocol switch (WebSocket): the connection becomes a tunnel


async def _gate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    secret: bytes,
    cookie: bytes,
    origin: bytes,
) -> _Passed | None:
    """The connection's one request, its secret taken out, when it carries the
    secret; else None, after an answer (403, or a browser's redirect that sets the
    cookie). Each connection carries one request (Connection: close): every request
    is checked, and no later one can bring a secret to the sandbox."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        await _answer(writer, b"400 Bad Request")
        return None
    if len(head) > MAX_HEAD:
        await _answer(writer, b"431 Request Header Fields Too Large")
        return None
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        await _answer(writer, b"400 Bad Request")
        return None
    method, target, version = parts
    ok, by_cookie, browser, upgrade, body = False, False, False, False, -1
    foreign = False  # sent by another origin's page (another port's, say)
    headers: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # One reading only: what the sandbox's server could read otherwise (a bare
        # CR or LF, a folded line, a space in a name) is refused, not passed on.
        if not colon or not TOKEN.fullmatch(name) or b"\r" in line or b"\n" in line:
            await _answer(writer, b"400 Bad Request")
            return None
        key, value = name.lower(), value.strip(b" \t")
        if key == b"sec-fetch-site" and value not in (b"same-origin", b"none"):
            foreign = True
        if key == b"origin" and value != origin:
            foreign = True
        if key == b"referer" and PREFIX in value:
            continue  # a page opened at its secret URL would tell its assets' server
        if key == HEADER:
            ok = ok or hmac.compare_digest(value, secret)
            continue  # the sandbox never sees the secret
        if key == b"cookie":
            kept = []
            for crumb in value.split(b";"):
                k, _, v = crumb.strip().partition(b"=")
                if k == cookie:
                    by_cookie = by_cookie or hmac.compare_digest(v, secret)
                elif not k.startswith(COOKIE + b"_"):  # nor another port's
                    kept.append(crumb.strip())
            if kept:
                headers.append(b"Cookie: " + b"; ".join(kept))
            continue
        if key in (b"connection", b"keep-alive", b"proxy-connection"):
            upgrade = upgrade or b"upgrade" in value.lower()
            continue  # ours says how the connection goes
        if key == b"transfer-encoding":
            await _answer(writer, b"411 Length Required")  # one framing only: Content-Length
            return None
        if key == b"content-length":
            if not value.isdigit() or body >= 0:  # one, and a number
                await _answer(writer, b"400 Bad Request")
                return None
            body = int(value)
        if key == b"sec-fetch-mode" and value == b"navigate":
            browser = True
        headers.append(name + b": " + value)
    # The cookie alone lets in only this port's own pages: browsers send a host's
    # cookies to all its ports, so another port's page could ride on it.
    ok = ok or (by_cookie and not foreign)
    if target.startswith(PREFIX):
        given, _, rest = target[len(PREFIX) :].partition(b"/")
        given, q, query = given.partition(b"?")
        if hmac.compare_digest(given, secret):
            if rest.startswith(b"/"):
                await _answer(writer, b"400 Bad Request")  # no //host redirects
                return None
            target = b"/" + rest + (b"?" + query if q else b"")
            if browser:
                # A page's own links and assets carry no secret: a cookie does.
                crumb = cookie + b"=" + secret + b"; HttpOnly; SameSite=Strict; Path=/"
                await _answer(
                    writer, b"303 See Other", (b"Location: " + target, b"Set-Cookie: " + crumb)
                )
                return None
            ok = True
    if not ok:
        await _answer(writer, b"403 Forbidden")
        return None
    headers.append(b"Connection: upgrade" if upgrade else b"Connection: close")
    head = b"\r\n".join([b" ".join([method, target, version]), *headers]) + b"\r\n\r\n"
    return _Passed(head, max(body, 0), upgrade)


async def _forward_one(
    provider: Provider,
    sb: Sandbox,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    passed: _Passed,
) -> None:
    """The one request to the sandbox's port, and its answer back."""
    up_r, up_w = await require(provider, caps.PortForwarding, "port forwarding").open_port(sb, port)
    try:
        up_w.write(passed.head)
        if passed.upgrade:
            # A tunnel only once the sandbox switches protocols; else its one answer.
            try:
                answer = await asyncio.wait_for(up_r.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            writer.write(answer)
            if answer.split(b" ", 2)[1:2] == [b"101"]:
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            else:
                await _pipe(up_r, writer)
            return
        left = passed.body
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                break
            up_w.write(data)
            await up_w.drain()
            left -= len(data)
        await _pipe(up_r, writer)
    finally:
        with contextlib.suppress(Exception):
            up_w.close()


async def _answer(
    writer: asyncio.StreamWriter, status: bytes, extra: tuple[bytes, ...] = ()
) -> None:
    lines = [b"HTTP/1.1 " + status, b"Content-Length: 0", b"Connection: close", *extra]
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()


def _proc_net_hex(host: str, port: int, v6: bool) -> str:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word in host order."""
    ip = ipaddress.ip_address(host)
    if v6 and ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    if (ip.version == 6) != v6:
        return ""
    packed = ip.packed
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    return "".join(w[::-1].hex().upper() for w in words) + f":{port:04X}"


def peer_uid(peer: object, ours: object) -> int | None:
    """The uid owning the other end of a loopback TCP connection: the row of
    /proc/net/tcp (or tcp6, for a v4-mapped client) whose local address is the
    peer's and remote address ours. Reads each table once, line by line, at most
    PROC_TCP_MAX_ROWS rows; None when not found."""
    if not (isinstance(peer, tuple) and isinstance(ours, tuple)):
        return None
    for table, v6 in (("/proc/self/net/tcp", False), ("/proc/self/net/tcp6", True)):
        local = _proc_net_hex(str(peer[0]), int(peer[1]), v6)
        remote = _proc_net_hex(str(ours[0]), int(ours[1]), v6)
        if not local or not remote:
            continue
        try:
            with open(table) as f:
                next(f, None)  # the header
                for n, line in enumerate(f):
                    if n >= PROC_TCP_MAX_ROWS:
                        log.warning("too many sockets to check a connection's owner", table=table)
                        return None
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == local and fields[2] == remote:
                        return int(fields[7])
        except FileNotFoundError:
            continue
    return None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()
