"""Bearer tokens: who may call the daemon over the network, for which tenant, with
which scope.

A token is "csk_<id>_<secret>". Only the id and a SHA-256 of the secret are
stored; the secret is shown once, when the token is made. (The secret is 256
random bits, so a fast hash is enough: there is nothing to guess.) Tokens live in
memory and in the store together, so a revocation holds from the next call on,
with no restart."""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from computesdkd.domain.errors import InvalidArgument, NotFound, Unauthenticated
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

PREFIX = "csk_"
TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# What an Authorization header may hold before we look at it at all.
MAX_TOKEN = 256
MAX_CHAIN = 16
MAX_TTL_S = 10 * 365 * 86400


class Scope(enum.IntEnum):
    # Values match computesdk.api.admin.v1.Scope; each includes the ones below it.
    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True)
class Token:
    id: str
    tenant: str
    scope: Scope
    digest: str
    description: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0  # 0: never
    revoked_at: float = 0.0  # 0: in force
    # The token that made this one over the network (a tenant's admin token), if
    # any: it lives no longer than its parent and dies with it.
    parent: str = ""
    # A client certificate identity (CN or SAN) standing in for a secret.
    subject: str = ""

    def live(self) -> bool:
        return not self.revoked_at and not (self.expires_at and self.expires_at <= time.time())


def check_tenant(tenant: str) -> str:
    if not TENANT.match(tenant):
        raise InvalidArgument(
            "a tenant is 1-63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            reason="TENANT_INVALID",
        )
    return tenant


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Access:
    def __init__(self, store: Store) -> None:
        self._records = store.records("tokens")
        self._tokens: dict[str, Token] = {}
        for name, value in self._records.all():
            self._tokens[name] = Token(**{**value, "scope": Scope(value["scope"])})

    def create(
        self,
        tenant: str,
        scope: Scope,
        description: str = "",
        ttl_s: float = 0,
        parent: Token | None = None,
        subject: str = "",
    ) -> tuple[Token, str]:
        """A new token and the string a client sends (never stored). A token made
        with another (parent) expires no later than it and is revoked with it."""
        check_tenant(tenant)
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl_seconds is at most {MAX_TTL_S} (ten years)")
        if len(description) > 256:
            raise InvalidArgument("a description is at most 256 characters")
        if len(subject) > 512 or subject != subject.strip():
            raise InvalidArgument("a client subject is at most 512 characters, unpadded")
        if subject and any(t.subject == subject and t.live() for t in self._tokens.values()):
            raise InvalidArgument(
                f"client subject {subject[:100]!r} already names a token: revoke it first"
            )
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + ttl_s if ttl_s > 0 else 0.0
        if parent is not None and parent.expires_at:
            expires = min(expires or parent.expires_at, parent.expires_at)
        if parent is not None and self._depth(parent) >= MAX_CHAIN - 1:
            raise InvalidArgument(
                f"tokens made by tokens nest at most {MAX_CHAIN} deep: make it over the socket"
            )
        token = Token(
            token_id,
            tenant,
            Scope(scope),
            _digest(secret),
            description,
            now,
            expires,
            parent=parent.id if parent is not None else "",
            subject=subject,
        )
        if subject:
            # No secret: the certificate is the credential.
            token = Token(**{**asdict(token), "digest": ""})
            secret = ""
        self._put(token)
        log.info("token created", token_id=token_id, tenant=tenant, scope=token.scope.name)
        return token, f"{PREFIX}{token_id}_{secret}" if secret else ""

    def list(self, tenant: str = "") -> list[Token]:
        tokens = sorted(self._tokens.values(), key=lambda t: (t.tenant, t.created_at))
        return [t for t in tokens if not tenant or t.tenant == tenant]

    def get(self, token_id: str, tenant: str = "") -> Token:
        token = self._tokens.get(token_id)
        if token is None or (tenant and token.tenant != tenant):
            raise NotFound(f"token {token_id!r} not found", reason="TOKEN_NOT_FOUND")
        return token

    def revoke(self, token_id: str, tenant: str = "") -> Token:
        token = self.get(token_id, tenant)
        if not token.revoked_at:
            token = Token(**{**asdict(token), "revoked_at": time.time()})
            self._put(token)
            log.info("token revoked", token_id=token_id, tenant=token.tenant)
        return token

    def authenticate(self, header: str | None) -> Token:
        """The token an Authorization header carries, or the reason it carries none."""
        if not header:
            raise Unauthenticated(
                "this listener needs a token: authorization: Bearer <token>",
                reason="TOKEN_MISSING",
            )
        scheme, _, value = header[:MAX_TOKEN].partition(" ")
        if scheme.lower() != "bearer" or len(header) > MAX_TOKEN:
            raise Unauthenticated("not a bearer token", reason="TOKEN_INVALID")
        token_id, _, secret = value.strip().removeprefix(PREFIX).partition("_")
        token = self._tokens.get(token_id)
        # The digest is compared in constant time so that timing says nothing of it.
        if (
            token is None
            or not token.digest
            or not hmac.compare_digest(token.digest, _digest(secret))
        ):
            raise Unauthenticated("the token is not valid", reason="TOKEN_INVALID")
        return self._holding(token)

    def by_certificate(self, names: Sequence[str]) -> Token:
        """The token a verified client certificate's names (CN, SANs) stand for."""
        named = [t for t in self._tokens.values() if t.subject and t.subject in names]
        live = [t for t in named if t.live()]
        if len({t.tenant for t in live}) > 1:
            # A certificate whose names two tenants' tokens bind is nobody's.
            raise Unauthenticated(
                "this client certificate's names stand for more than one tenant",
                reason="TOKEN_INVALID",
            )
        if named:
            return self._holding(max(live or named, key=lambda t: t.created_at))
        raise Unauthenticated(
            "this listener needs a token (authorization: Bearer <token>), or a client "
            "certificate that a token names",
            reason="TOKEN_MISSING",
        )

    def _holding(self, token: Token) -> Token:
        # It holds while it and every token above it hold (a short chain: each
        # link was made by the one before, so the walk ends).
        link: Token | None = token
        for _ in range(MAX_CHAIN):
            if link is None:
                break
            if link.revoked_at:
                raise Unauthenticated("the token was revoked", reason="TOKEN_REVOKED")
            if link.expires_at and link.expires_at <= time.time():
                raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
            link = self._tokens.get(link.parent) if link.parent else None
        return token

    def _depth(self, token: Token) -> int:
        depth, link = 0, token
        while link.parent and depth < MAX_CHAIN:
            parent = self._tokens.get(link.parent)
            if parent is None:
                break
            link, depth = parent, depth + 1
        return depth

    def _put(self, token: Token) -> None:
        self._tokens[token.id] = token
        value = asdict(token)
        value["scope"] = int(token.scope)
        self._records.put(token.id, value)
