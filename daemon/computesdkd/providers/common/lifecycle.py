"""Guards every provider's create() shares."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

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


def owner_id(path: Path) -> str:
    """This daemon's name in a vendor's labels or tags, by which its start-up sweep
    finds its own orphans: one per state dir (the file at path), kept across
    restarts; made afresh when missing or not one."""
    with contextlib.suppress(OSError):
        if re.fullmatch(r"[0-9a-f]{16,32}", text := path.read_text().strip()):
            return text
    owner = secrets.token_hex(16)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(owner + "\n")
    return owner


def save_json(path: Path, value: object) -> None:
    """Writes a provider's small state file whole or not at all (a crash leaves the
    old one), readable only by the daemon."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
