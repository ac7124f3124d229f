"""A circuit breaker per provider: a provider that keeps failing is skipped fast.

closed: calls flow and consecutive failures are counted. After `threshold`
failures it opens: calls fail at once with CIRCUIT_OPEN, without touching the
provider, until `reset_after_s` has passed. Then it is half-open: one trial call
is let through; success closes it, failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from computesdkd.domain.errors import Code, ComputeError, Unavailable
from computesdkd.support import logs

log = logs.get(__name__)


class Circuit(enum.IntEnum):
    # Values match computesdk.api.provider.v1.CircuitState.
    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


# Failures that say the provider, not the request, is at fault.
_PROVIDER_FAULTS = {Code.UNAVAILABLE, Code.INTERNAL, Code.DEADLINE_EXCEEDED}


def is_provider_fault(exc: BaseException) -> bool:
    if isinstance(exc, ComputeError):
        return exc.code in _PROVIDER_FAULTS and exc.reason != "CIRCUIT_OPEN"
    return isinstance(exc, (OSError, TimeoutError))


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        on_change: Callable[[str, Circuit, str], object],
        threshold: int = 5,
        reset_after_s: float = 30.0,
    ) -> None:
        self.provider = provider
        self.state = Circuit.CLOSED
        self._on_change = on_change
        self._threshold = threshold
        self._reset_after_s = reset_after_s
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    def _set(self, state: Circuit, why: str) -> None:
        if state != self.state:
            self.state = state
            self._on_change(self.provider, state, why)

    def before_call(self) -> None:
        if self.state == Circuit.OPEN:
            if time.monotonic() - self._opened_at < self._reset_after_s:
                raise Unavailable(
                    f"provider {self.provider!r} is failing; its circuit is open",
                    reason="CIRCUIT_OPEN",
                    provider=self.provider,
                )
            self._set(Circuit.HALF_OPEN, "reset timeout passed; trying one call")
        if self.state == Circuit.HALF_OPEN:
            if self._trial_running:
                raise Unavailable(
                    f"provider {self.provider!r} is being probed; its circuit is half-open",
                    reason="CIRCUIT_OPEN",
                    provider=self.provider,
                )
            self._trial_running = True

    def record(self, exc: BaseException | None) -> None:
        self._trial_running = False
        if exc is None or not is_provider_fault(exc):
            self._failures = 0
            self._set(Circuit.CLOSED, "a call succeeded")
            return
        self._failures += 1
        if self.state == Circuit.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            if self.state != Circuit.OPEN:
                # The last failure's own text stays in the daemon's log: it may be
                # one tenant's call (a vendor's message, a sandbox id), and the
                # circuit event goes to every tenant, which gets only its reason.
                log.warning("provider circuit opens", provider=self.provider, last_error=str(exc))
            reason = exc.reason if isinstance(exc, ComputeError) else type(exc).__name__
            self._set(Circuit.OPEN, f"{self._failures} consecutive failures ({reason})")
