"""The daemon's end of the agent's network channel (agent -listen-tcp, daemon/agent/netauth.go).

On Kubernetes a sandbox is a pod whose entrypoint is computesdk-agent, and the
daemon reaches it at the pod's IP, where any other pod can connect as well. So
the channel is TLS to a per-sandbox self-signed certificate whose SHA-256 the
daemon pins (no CA: the daemon made the certificate and knows its hash), and
then a mutual proof of a per-sandbox token, never sent:

    agent  -> daemon  'H' nonce_a (32 bytes)
    daemon -> agent   'A' nonce_c (32) || HMAC(token, LABEL_DAEMON || nonce_a || nonce_c)
    agent  -> daemon  'A' HMAC(token, LABEL_AGENT || nonce_a || nonce_c)

after which the stream carries the agent wire of providers/common/agent.py
(AgentConnection(reader, writer)). Why both: TLS keeps the output, stdin and
files off a node's sniffer and, pinned, proves the agent to the daemon; the
token proves the daemon to the agent (TLS here has no client certificate) and is
what a Kubernetes Secret delivers per sandbox, with the certificate and key. The
token is also the agent's proof on a -plaintext channel (loopback tests only).

new_credentials() makes what goes into the sandbox's Secret; the daemon keeps
the token and the fingerprint. The local provider does not use this module.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import secrets
import ssl
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from computesdkd.domain.errors import Aborted, Internal, Unavailable

_HDR = struct.Struct(">BI")
HELLO, AUTH = ord("H"), ord("A")
NONCE = 32
MAC = hashlib.sha256().digest_size
LABEL_DAEMON = b"computesdk-agent/v1 daemon"
LABEL_AGENT = b"computesdk-agent/v1 agent"
MAX_FRAME = 8 << 20  # the agent wire's frame cap (providers/common/agent.py)
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 10.0  # TLS and the proof; the agent gives 5 s from accept
READY_POLL_S = (0.05, 1.0)  # first and longest wait between tries while a pod starts
CERT_DAYS = 3650  # the pin, not the dates, is what the daemon checks


class AgentUnreachable(Aborted):
    """Nothing answers at the pod's address (not started yet, or gone)."""

    reason = "SANDBOX_TERMINATED"


class AgentHandshakeFailed(Internal):
    """The peer is not this sandbox's agent, or refused the daemon's proof: a wrong
    certificate, a wrong token, or something else listening at the pod's IP."""

    reason = "AGENT_PROTOCOL_ERROR"

    def __init__(self, what: str) -> None:
        super().__init__(f"the sandbox agent failed the channel handshake ({what})")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    token: bytes = field(repr=False)
    cert_sha256: bytes | None  # None: -plaintext (loopback tests only)


@dataclass(frozen=True)
class Credentials:
    """One sandbox's: token, cert and key go into its Secret (files mode 0400);
    the daemon keeps token and cert_sha256."""

    token: bytes = field(repr=False)
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    cert_sha256: bytes


def new_credentials(name: str = "computesdk-sandbox") -> Credentials:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Credentials(
        token=secrets.token_urlsafe(32).encode(),  # text: the agent trims whitespace
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_sha256=hashlib.sha256(der).digest(),
    )


def proof(token: bytes, label: bytes, nonce_a: bytes, nonce_c: bytes) -> bytes:
    return hmac.new(token, label + nonce_a + nonce_c, hashlib.sha256).digest()


def _tls_context() -> ssl.SSLContext:
    # No CA and no name: the peer's certificate is checked against the pin below.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _check_pin(writer: asyncio.StreamWriter, pin: bytes) -> None:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der or not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
        raise AgentHandshakeFailed("not the sandbox's certificate")


async def _frame(reader: asyncio.StreamReader, kind: int, size: int) -> bytes:
    """The next frame, which must be of this kind and exactly this size."""
    got, n = _HDR.unpack(await reader.readexactly(_HDR.size))
    if got != kind or n != size:
        raise AgentHandshakeFailed(f"frame type {got} of {n} bytes")
    return await reader.readexactly(n)


async def _prove(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: bytes) -> None:
    nonce_a = await _frame(reader, HELLO, NONCE)
    nonce_c = secrets.token_bytes(NONCE)
    body = nonce_c + proof(token, LABEL_DAEMON, nonce_a, nonce_c)
    writer.write(_HDR.pack(AUTH, len(body)) + body)
    await writer.drain()
    try:
        theirs = await _frame(reader, AUTH, MAC)
    except asyncio.IncompleteReadError:
        raise AgentHandshakeFailed("the agent refused the daemon's proof") from None
    if not hmac.compare_digest(theirs, proof(token, LABEL_AGENT, nonce_a, nonce_c)):
        raise AgentHandshakeFailed("the agent's proof does not check")


async def open_stream(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to the sandbox's agent past TLS and the proof, ready for a Request
    frame: wrap it in providers/common/agent.py's AgentConnection."""
    ctx = _tls_context() if ep.cert_sha256 is not None else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(ep.host, ep.port, ssl=ctx, limit=MAX_FRAME + 16),
            CONNECT_TIMEOUT_S,
        )
    except ssl.SSLError as exc:
        raise AgentHandshakeFailed(f"TLS: {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise AgentUnreachable(f"sandbox agent is not reachable: {exc}") from exc
    try:
        if ep.cert_sha256 is not None:
            _check_pin(writer, ep.cert_sha256)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await _prove(reader, writer, ep.token.strip())
    except BaseException as exc:
        writer.close()
        if isinstance(exc, asyncio.IncompleteReadError | OSError | TimeoutError):
            raise AgentHandshakeFailed("the connection closed during the handshake") from None
        raise
    return reader, writer


async def wait_ready(ep: Endpoint, timeout_s: float) -> None:
    """Until the pod's agent accepts and passes the handshake. Unlike local, where
    the daemon binds the socket before init starts, a pod's port opens only once
    the agent runs, so this polls; a refused connection costs the daemon nothing at
    the agent, but a failed handshake counts against its address and is not retried."""
    delay, longest = READY_POLL_S
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    _, writer = await open_stream(ep)
                except AgentUnreachable:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, longest)
                    continue
                writer.close()
                return
    except TimeoutError:
        raise Unavailable("sandbox agent did not start in time", reason="AGENT_TIMEOUT") from None
