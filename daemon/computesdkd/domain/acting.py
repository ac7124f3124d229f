"""The tenant a piece of work is done for: set by the edge at the start of each
call (and inherited by what the call starts), read where a record of that work
carries no sandbox to tell its tenant by (an event about a volume or a template).
Empty for the admin and for the daemon's own work."""

from __future__ import annotations

import contextvars

_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("acting_tenant", default="")


def tenant() -> str:
    return _TENANT.get()


def act_for(tenant: str) -> None:
    """For the rest of this task (each call runs in a task of its own)."""
    _TENANT.set(tenant)
