"""Daytona's preview links: `GET /sandbox/{id}/ports/{port}/preview-url` gives
the URL of a port on Daytona's preview domain (any port, open or not yet; no
port needs declaring at create) and an access token.

Sandboxes are made private (`public: false`) unless DAYTONA_PUBLIC_PREVIEWS=true
in the provider's environment. A private sandbox's preview answers 401 without
`X-Daytona-Preview-Token: <token>` (the token of Daytona's own get_preview_link)
or `Authorization: Bearer <DAYTONA_API_KEY>`: the daemon returns the URL alone
and keeps, stores and logs no token."""

from __future__ import annotations

from urllib.parse import urlsplit

from computesdkd.domain.errors import InvalidArgument
from computesdkd.domain.model import Sandbox
from computesdkd.providers.capabilities import PreviewUrls
from computesdkd.providers.daytona.api import NAME, DaytonaAPI, bad_answer, obj

MAX_URL = 2048


def preview_url(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise bad_answer("preview url", "no URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username:
        raise bad_answer("preview url", "the URL is not http(s)")
    return value


class PreviewLinks(PreviewUrls):
    def __init__(self, api: DaytonaAPI) -> None:
        self._api = api

    async def preview_url(self, sandbox: Sandbox, port: int) -> str:
        if not 1 <= port <= 65535:
            raise InvalidArgument(
                f"daytona: a preview port is 1-65535, not {port}",
                reason="PROVIDER_LIMIT",
                provider=NAME,
            )
        resp = await self._api.call(
            "GET",
            f"/sandbox/{sandbox.provider_sandbox_id}/ports/{port}/preview-url",
            "preview url",
            not_found="SANDBOX_NOT_FOUND",
        )
        out = obj(resp, "preview url")  # its token is dropped here, never kept
        return preview_url(out.get("url"))
