"""Guards every provider's create() shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from computesdkd.domain.errors import Unavailable
from computesdkd.domain.model import Sandbox
from computesdkd.providers.base import Provider


def cannot_run(provider: str, why: str) -> Unavailable:
    return Unavailable(
        f"provider {provider!r} cannot run here: {why}",
        reason="PROVIDER_UNAVAILABLE",
        provider=provider,
    )


@contextlib.asynccontextmanager
async def destroyed_on_failure(provider: Provider, sandbox: Sandbox) -> AsyncIterator[None]:
    """For create's steps after the vendor made the sandbox: if one fails (or the
    call is cancelled), the half-made sandbox is freed before the error goes on."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await provider.destroy(sandbox)
        raise
