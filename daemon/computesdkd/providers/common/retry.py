"""The one retry policy for calls to a vendor, HTTP or gRPC.

Exponential backoff with full jitter, unless the vendor said how long to wait
(HTTP Retry-After, Modal's retry policy in the gRPC status details); at most
ATTEMPTS tries, and none that would start past TOTAL_S from the first. Which
failures are worth another try is the transport's call (http.py, modal/grpc.py):
an attempt raises Retryable for those.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from computesdkd.domain.errors import ComputeError

T = TypeVar("T")

ATTEMPTS = 4
TOTAL_S = 30.0
# Full jitter: the n-th wait is uniform in [0, min(5 s, 0.2 s * 2**(n-1))].
_backoff = wait_random_exponential(multiplier=0.2, max=5.0)


class Retryable(Exception):
    """A failed attempt that another may cure. error is what the caller gets when
    none does; after_s is the vendor's own hint, when it gave one."""

    def __init__(self, error: ComputeError, after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.after_s = after_s


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Retryable) and exc.after_s is not None:
        # A hint past the budget stops the retries (stop_before_delay) rather
        # than being cut short: the vendor said it will not take the call sooner.
        return max(exc.after_s, 0.0)
    return _backoff(state)


async def call(attempt: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """attempt's result, trying again while it raises Retryable and the budget
    lasts; then the last Retryable's error (anything else is raised at once)."""
    policy = AsyncRetrying(
        retry=retry_if_exception_type(Retryable),
        wait=_wait,
        stop=stop_after_attempt(attempts) | stop_before_delay(TOTAL_S),
        reraise=True,
    )
    try:
        async for tried in policy:
            with tried:
                return await attempt()
    except Retryable as last:
        raise last.error from last.__cause__
    raise AssertionError("unreachable: the policy either returns or raises")
