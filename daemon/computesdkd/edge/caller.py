"""Who is calling: set once per call by the network listener's interceptor.

On the Unix socket nothing sets it, and the caller is the admin: root, every
tenant in reach. Servicers read it to stamp what they create with its tenant."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from computesdkd.domain import acting
from computesdkd.features.access import Scope


@dataclass(frozen=True)
class Caller:
    tenant: str
    scope: Scope
    token_id: str = ""

    @property
    def admin(self) -> bool:
        """The Unix socket's caller, who sees every tenant."""
        return not self.tenant


ADMIN = Caller(tenant="", scope=Scope.ADMIN)
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ADMIN)


def current() -> Caller:
    return _CALLER.get()


def bind(caller: Caller) -> None:
    """For the rest of this task (each call runs in a task of its own)."""
    acting.act_for(caller.tenant)
    _CALLER.set(caller)
