"""A second attack pass on the network listener, against the code the first one
brought (tests/security/test_remote_attacks.py): the reservations of names a call
makes (edge/tenancy.py), certificate identities (features/access.py), and the
exposed-port HTTP gate (features/networks/ports.py).

A test that asserts the secure behaviour and FAILS shows a hole that is open
now; its comment says what the attack is."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pki import CA, Pair

from computesdk import Client
from computesdk._rpc import Transport, open_channel
from computesdk_api.process.v1 import process_pb2 as pr
from computesdk_api.process.v1 import process_pb2_grpc as pr_grpc
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb
from computesdk_api.sandbox.v1 import sandbox_pb2_grpc as sb_grpc
from computesdk_api.template.v1 import template_pb2 as tp
from computesdk_api.volume.v1 import volume_pb2 as vo
from computesdk_api.volume.v1 import volume_pb2_grpc as vo_grpc
from computesdkd.core.owners import SANDBOX
from computesdkd.domain.errors import ComputeError
from computesdkd.edge.caller import Caller
from computesdkd.edge.references import NAMED, TEMPLATE, VOLUME
from computesdkd.edge.tenancy import Tenancy
from computesdkd.features.access import Scope
from computesdkd.features.networks import ports
from conftest import DaemonProcess, new_daemon, serving_port

# ----------------------------------------------------------------- the world


@dataclass
class Net:
    daemon: DaemonProcess
    admin: Client
    address: str
    ca: CA
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def token(self, tenant: str, scope: str = "write", ttl: int = 0) -> str:
        _, secret = await self.admin.admin.create_token(tenant, scope, ttl_seconds=ttl)
        return secret

    def channel(self, token: str | None, pair: Pair | None = None) -> grpc.aio.Channel:
        t = Transport(self.address, token, tls=True, ca=self.ca.pem.read_bytes())
        if pair is not None:
            t = Transport(
                self.address,
                token,
                tls=True,
                ca=self.ca.pem.read_bytes(),
                cert=pair.cert.read_bytes(),
                key=pair.key.read_bytes(),
            )
        ch = open_channel(t)
        self.channels.append(ch)
        return ch

    async def tenant(self, tenant: str, scope: str = "write") -> grpc.aio.Channel:
        return self.channel(await self.token(tenant, scope))


async def _start(mtls: bool) -> Net:
    d = new_daemon()
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    d.extra_args = ["--listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    if mtls:
        d.extra_args += ["--tls-client-ca", str(ca.pem)]
    d.start()
    admin = await Client.connect(socket=d.socket)
    return Net(d, admin, f"127.0.0.1:{serving_port(d)}", ca)


async def _stop(n: Net) -> None:
    for ch in n.channels:
        with contextlib.suppress(Exception):
            await ch.close()
    await n.admin.close()
    n.daemon.cleanup()


@pytest_asyncio.fixture(scope="module")
async def net() -> AsyncIterator[Net]:
    n = await _start(mtls=False)
    try:
        yield n
    finally:
        await _stop(n)


@dataclass
class Failure:
    code: str
    reason: str
    message: str


async def _fails(coro: Any) -> Failure | None:
    """None when the call succeeded, else how it failed."""
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)
        reason = ""
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
        return Failure(err.code().name, reason, err.details() or "")
    return None


async def _create(ch: grpc.aio.Channel, **kw: Any) -> sb.Sandbox:
    kw.setdefault("provider", "local")
    resp = await sb_grpc.SandboxServiceStub(ch).CreateSandbox(
        sb.CreateSandboxRequest(**kw), timeout=60
    )
    return resp.sandbox


async def _destroy(ch: grpc.aio.Channel, sandbox_id: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await sb_grpc.SandboxServiceStub(ch).DestroySandbox(
            sb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout=60
        )


async def _sh(ch: grpc.aio.Channel, sandbox_id: str, command: str) -> str:
    resp = await pr_grpc.ProcessServiceStub(ch).RunCommand(
        pr.RunCommandRequest(sandbox_id=sandbox_id, command=pr.Command(command=command)),
        timeout=60,
    )
    return resp.stdout.decode(errors="replace")


# ------------------------------------------------- reservations of names made


async def test_a_stale_row_does_not_open_a_volume_another_tenant_is_making(net: Net) -> None:
    # ATTACK: Tenancy._check_one lets an owner row through when the thing exists
    # ("exists and owner == caller.tenant"), without asking whether another
    # tenant's call has it reserved (_pending): the pending check guards only the
    # first shortcut. A's row for a volume name goes stale as soon as A's
    # ephemeral volume goes with its sandbox (nothing releases it). When tenant B
    # then makes a volume of that name, it exists from the moment features/
    # volumes.py writes its record until B's call settles (for a CreateSandbox
    # with an ephemeral mount: the whole sandbox start). In that window A passes
    # the guard as the volume's owner and mounts B's volume in a sandbox of its
    # own, which keeps it mounted (and readable) after B's settle hands the row
    # to B. A can squat common names ("data", "cache") this way in advance.
    a = await net.tenant("resv-a")
    b = await net.tenant("resv-b")
    name = "resv-shared-data"
    mount = sb.VolumeMount(name=name, mount_path="/data", size_mb=16)
    left = await _create(a, volumes=[mount])
    await _destroy(a, left.id)  # the volume goes; A's row for it stays
    a_vol = vo_grpc.VolumeServiceStub(a)
    gone = await _fails(a_vol.GetVolume(vo.GetVolumeRequest(name=name), timeout=30))
    assert gone is not None and gone.code == "NOT_FOUND"

    making = asyncio.create_task(_create(b, volumes=[mount]))
    stolen: sb.Sandbox | None = None
    opened = 0
    try:
        while not making.done() and stolen is None:
            if await _fails(a_vol.GetVolume(vo.GetVolumeRequest(name=name), timeout=30)) is None:
                opened += 1
                with contextlib.suppress(grpc.aio.AioRpcError):
                    stolen = await _create(
                        a, volumes=[sb.VolumeMount(name=name, mount_path="/stolen")]
                    )
            await asyncio.sleep(0.002)
        victim = await making
        read = ""
        if stolen is not None:
            await _sh(b, victim.id, "echo B-VOLUME-SECRET > /data/secret")
            read = await _sh(a, stolen.id, "cat /stolen/secret 2>/dev/null || true")
        assert opened == 0 and stolen is None, (
            f"A passed the guard {opened}x on B's volume while B made it; "
            f"A's sandbox mounted it and read {read!r}"
        )
    finally:
        if stolen is not None:
            await _destroy(a, stolen.id)
        if making.done() and not making.exception():
            await _destroy(b, making.result().id)


class _Owners:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], str] = {}

    def of(self, kind: str, key: str) -> str | None:
        return self.rows.get((kind, key))

    def claim(self, kind: str, key: str, tenant: str) -> None:
        if tenant:
            self.rows[(kind, key)] = tenant
        else:
            self.rows.pop((kind, key), None)

    def release(self, kind: str, key: str) -> None:
        self.rows.pop((kind, key), None)


def _tenancy() -> tuple[Tenancy, _Owners, set[tuple[str, str]]]:
    owners, present = _Owners(), set()
    exists = {k: (lambda key, k=k: (k, key) in present) for k in (SANDBOX, *NAMED)}
    return Tenancy(owners, exists, "local"), owners, present  # type: ignore[arg-type]


def _as(tenant: str) -> Caller:
    return Caller(tenant=tenant, scope=Scope.WRITE, token_id="t-" + tenant)


def test_a_template_being_built_is_not_anyones_to_use_before_its_build_settles() -> None:
    # ATTACK: the same shortcut for templates: "exists and owner is None and kind
    # == TEMPLATE" passes any tenant, reserved or not. Tenant B builds a private
    # template; the provider registers it (exists) and the stream still has its
    # result to send before the call ends and settle writes B's row. Meanwhile the
    # template has no row, so it reads as the admin's shared one: tenant A's
    # CreateSandbox(template=...) in that window runs on B's private image (its
    # files, its env). Shown on Tenancy itself, as the window is timing.
    t, _, present = _tenancy()
    build = tp.BuildTemplateRequest(definition=tp.TemplateDefinition(name="b-private"))
    fresh, _ = t.check(_as("b"), build)
    assert fresh == [(TEMPLATE, "b-private")]
    present.add((TEMPLATE, "b-private"))  # built, not yet settled
    with pytest.raises(ComputeError) as info:
        t.check(_as("a"), sb.CreateSandboxRequest(template="b-private"))
    assert info.value.code.name == "NOT_FOUND"


def test_an_owner_row_does_not_pass_a_name_another_tenant_has_reserved() -> None:
    # The volume case of the first test, without its timing: A holds a stale
    # row, B's create has reserved the name and made the volume, not yet settled.
    t, owners, present = _tenancy()
    owners.claim(VOLUME, "v", "a")  # stale: A's volume went with its sandbox
    fresh, _ = t.check(_as("b"), vo.CreateVolumeRequest(name="v"))
    assert fresh == [(VOLUME, "v")]
    present.add((VOLUME, "v"))
    with pytest.raises(ComputeError):
        t.check(_as("a"), vo.GetVolumeRequest(name="v"))
    with pytest.raises(ComputeError):
        t.check(_as("a"), vo.DeleteVolumeRequest(name="v"))


@pytest.mark.parametrize(
    ("base", "manager"), [("python:3.11-slim", "pip"), ("node:18", "npm"), ("debian:12", "apt")]
)
def test_a_hub_name_the_base_stands_in_for_builds_on_it_without_a_pull(
    base: str, manager: str
) -> None:
    # ATTACK: a tenant names a Hub image to make the daemon pull from a registry
    # the admin never allowed. A name the Debian base stands in for is rewritten
    # to that base (no pull at all); what `packages` meant for it is kept.
    t, _, present = _tenancy()
    present.add((TEMPLATE, "base"))  # predefined
    build = tp.BuildTemplateRequest(definition=tp.TemplateDefinition(name="mine", base_image=base))
    t.check(_as("a"), build)
    assert build.definition.base_image == "template:base"
    assert build.definition.package_manager == manager


@pytest.mark.parametrize("base", ["python:3.12", "evil.example/python:3.11", "oci:/etc"])
def test_any_other_base_outside_the_allowed_registries_stays_refused(base: str) -> None:
    t, _, _ = _tenancy()
    build = tp.BuildTemplateRequest(definition=tp.TemplateDefinition(name="mine", base_image=base))
    with pytest.raises(ComputeError) as info:
        t.check(_as("a"), build)
    assert info.value.reason == "BASE_IMAGE_FORBIDDEN"
    assert build.definition.base_image == base


# ------------------------------------------------- client certificates


def _client_cert(ca: CA, label: str, cn: str, sans: list[x509.GeneralName]) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    c, k = ca.dir / f"{label}.pem", ca.dir / f"{label}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pair(c, k)


async def test_a_uri_subject_is_not_matched_by_a_common_name(tmp_path: Path) -> None:
    # ATTACK: a token's client_subject matches the certificate's CN or any SAN,
    # whatever their kind (edge/access.py flattens x509_common_name and
    # x509_subject_alternative_name into one list). The admin binds tenant A's
    # SPIFFE id, a URI SAN that the CA vouches for. Tenant B's workload has a
    # certificate from the same CA for its own id; most issuers (SPIRE's DNS
    # names, cert-manager CSRs, corporate CAs) check the SANs they put in a
    # certificate, not a free-text CN. B's certificate with CN = A's SPIFFE id
    # is A's: B acts as tenant A, with A's scope, and needs no token at all.
    n = await _start(mtls=True)
    try:
        a_id = "spiffe://cluster/ns/a/sa/api"
        await n.admin.admin.create_token("cert-a", "write", client_subject=a_id)
        a_real = _client_cert(n.ca, "a-real", "a-api", [x509.UniformResourceIdentifier(a_id)])
        a_sb = await _create(n.channel(None, a_real))
        forged = _client_cert(
            n.ca, "b-forged", a_id, [x509.UniformResourceIdentifier("spiffe://cluster/ns/b/sa/x")]
        )
        seen = None
        failed = await _fails(
            sb_grpc.SandboxServiceStub(n.channel(None, forged)).ListSandboxes(
                sb.ListSandboxesRequest(), timeout=30
            )
        )
        if failed is None:
            seen = await sb_grpc.SandboxServiceStub(n.channel(None, forged)).ListSandboxes(
                sb.ListSandboxesRequest(), timeout=30
            )
        assert failed is not None and failed.code == "UNAUTHENTICATED", (
            f"a certificate whose CN spells A's URI SAN is tenant A's: it lists "
            f"{[s.id for s in seen.sandboxes] if seen else []} (A's: {a_sb.id})"
        )
    finally:
        await _stop(n)


# ------------------------------------------------- the exposed-port gate
#
# _gate is driven directly: what a request becomes on its way to the sandbox is
# the head it returns, and its answer is what it wrote.

SECRET = b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3"
COOKIE = b"csk_secret_40001"
ORIGIN = b"http://host:40001"


class _Writer:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass


async def _through(raw: bytes) -> tuple[ports._Passed | None, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    w = _Writer()
    passed = await ports._gate(reader, w, SECRET, COOKIE, ORIGIN)  # type: ignore[arg-type]
    return passed, w.out


async def test_a_cookie_sent_by_another_ports_page_does_not_pass() -> None:
    # ATTACK (cross-port request forgery): every tenant's port listens on the
    # same --public-host, and SameSite=Strict treats all ports of a host as the
    # same site. Tenant A's page, served at http://HOST:PORT_A/, makes the
    # victim's browser POST to http://HOST:PORT_B/ (a form, fetch no-cors): the
    # browser attaches csk_secret_PORT_B and the gate lets the request in, so
    # A drives B's app as the victim. The browser says where it comes from
    # (Sec-Fetch-Site: same-site, Origin: another port); a cookie alone should
    # only pass a request of the same origin (or a navigation the user made).
    raw = (
        b"POST /admin/delete-everything HTTP/1.1\r\nHost: host:40001\r\n"
        b"Origin: http://host:40002\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Mode: no-cors\r\n"
        b"Cookie: " + COOKIE + b"=" + SECRET + b"\r\nContent-Length: 0\r\n\r\n"
    )
    passed, answer = await _through(raw)
    assert passed is None and b"403" in answer, "another port's page drove this port's app"


async def test_the_secret_in_a_referer_does_not_reach_the_sandbox() -> None:
    # ATTACK: "every form of the secret is taken out before the request reaches
    # the sandbox", but a page opened at its secret URL (any client that sends
    # no Sec-Fetch-Mode: navigate, so gets no redirect: older Safari, webviews,
    # curl -L, link previewers) loads its assets with Referer:
    # http://HOST:PORT/_csk/SECRET/. The gate passes that header as it is, so the
    # code in the sandbox (untrusted, by the purpose of a sandbox) learns the
    # port's secret, and with it the URL others were given.
    raw = (
        b"GET /app.js HTTP/1.1\r\nHost: h\r\nX-Computesdk-Secret: " + SECRET + b"\r\n"
        b"Referer: http://h:40001/_csk/" + SECRET + b"/index.html\r\n\r\n"
    )
    passed, _ = await _through(raw)
    assert passed is not None
    assert SECRET not in passed.head, passed.head


@pytest.mark.parametrize(
    "head",
    [
        # Two Content-Lengths: the gate frames the body by the last, a server by
        # the first; the rest of the "body" is a second request the gate never saw.
        b"Content-Length: 0\r\nContent-Length: 60",
        # A bare LF inside a header line: one line to the gate, two to lenient
        # servers (Node's insecureHTTPParser, many Go and Python ones): a
        # Transfer-Encoding the gate refuses gets through.
        b"X-A: 1\nTransfer-Encoding: chunked",
        # An obs-fold continuation line: the gate frames the body by it, a server
        # that unfolds it (RFC 9112 allows that) reads "X-A: 1 Content-Length: 60"
        # and no body, so the 60 bytes are a second request.
        b"X-A: 1\r\n Content-Length: 60",
        # Whitespace between a field name and its colon (RFC 9112: MUST reject):
        # a server that keeps "Content-Length " as another header sees no body.
        b"Content-Length : 60",
    ],
    ids=["duplicate-content-length", "bare-lf", "obs-fold", "space-before-colon"],
)
async def test_an_ambiguous_head_is_refused(head: bytes) -> None:
    # ATTACK (request smuggling): the gate parses the head one way and forwards
    # its lines unchanged, for a server that may parse them another way. Each of
    # these gets a second, unchecked request (or a framing the gate refuses) to
    # the sandbox's server through a connection that is meant to carry one
    # checked request; RFC 9112 says to answer them 400.
    raw = b"GET /_csk/" + SECRET + b"/one HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n\r\n"
    passed, answer = await _through(raw)
    assert passed is None and (b"400" in answer or b"411" in answer), (
        passed.head if passed else answer
    )


async def test_an_upgrade_the_sandbox_declines_does_not_become_a_tunnel() -> None:
    # ATTACK: a request that says Connection: upgrade passes the gate and the
    # connection becomes a raw two-way pipe at once, whatever the sandbox's
    # server answers. A server that ignores the upgrade answers 200 and reads the
    # next request from the same connection: from then on nothing is checked,
    # and "one request per connection" no longer holds. The tunnel should open
    # only once the sandbox answers 101 Switching Protocols.
    got: list[bytes] = []

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = b""
        with contextlib.suppress(Exception):
            while chunk := await asyncio.wait_for(r.read(65536), 1.0):
                data += chunk
                if data.count(b"\r\n\r\n") >= 2:
                    break
        got.append(data)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        w.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]

    class Forwarding:
        async def open_port(self, sandbox: object, port: int) -> Any:
            return await asyncio.open_connection("127.0.0.1", up_port)

    class Provider:
        name = "fake"
        why_not: dict[str, str] = {}

        def part(self, kind: type) -> Any:
            return Forwarding()

    raw = (
        b"GET /_csk/" + SECRET + b"/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n"
        b"GET /unchecked HTTP/1.1\r\nHost: h\r\nCookie: csk_secret_1=other-ports-secret\r\n\r\n"
    )
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    w = _Writer()
    w.close = lambda: None  # type: ignore[attr-defined]
    passed = await ports._gate(reader, w, SECRET, COOKIE, ORIGIN)  # type: ignore[arg-type]
    assert passed is not None and passed.upgrade
    await asyncio.wait_for(
        ports._forward_one(Provider(), None, 80, reader, w, passed),  # type: ignore[arg-type]
        5,
    )
    server.close()
    assert got, "the fake sandbox server got nothing"
    assert b"/unchecked" not in got[0], got[0]
