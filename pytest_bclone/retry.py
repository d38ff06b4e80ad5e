"""Retries with exponential backoff and jitter, and a per-attempt timeout, for any async call.

Used by the litellm agent and usable by judge evaluators::

    policy = RetryPolicy.from_config(config)
    value, attempts = await call_with_retries(lambda: litellm.acompletion(...), policy, label="judge")

What is retried: HTTP 429, 408 and 5xx, timeouts and connection errors. Any other failure (a 400,
a 401, a malformed body) fails at once: asking again would get the same answer and only cost
time. A call that fails for good raises :class:`~pytest_bclone.errors.RetriesExhausted`.
Stdlib only: no litellm import here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import RetriesExhausted

if TYPE_CHECKING:
    from .config import BcloneConfig

T = TypeVar("T")

__all__ = ["Failure", "RetryPolicy", "call_with_retries", "classify_exception", "describe_exception"]

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
"""HTTP statuses retried besides every 5xx (408 timeout, 409/425 transient conflicts, 429 rate limit)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one call.

    ``max_retries`` is the number of attempts after the first; ``timeout`` bounds each attempt
    (seconds). The n-th retry waits ``min(backoff_max, backoff_base * 2**n)`` scaled by a random
    factor in ``[1 - jitter, 1]``, so many workers that hit a 429 together do not come back
    together. Tests use a tiny ``backoff_base`` to stay fast.
    """

    max_retries: int = 4
    timeout: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5

    @classmethod
    def from_config(cls, config: BcloneConfig, **overrides: Any) -> RetryPolicy:
        """The policy of ``--bclone-max-retries`` and ``--bclone-timeout``; ``overrides`` win."""
        values: dict[str, Any] = {"max_retries": config.max_retries, "timeout": config.timeout}
        values.update(overrides)
        return cls(**values)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base = min(self.backoff_max, self.backoff_base * 2.0**retry)
        factor = 1.0 - self.jitter * (rng.random() if rng is not None else random.random())
        return base * factor


@dataclass(frozen=True)
class Failure:
    """What one failed attempt was: whether asking again may help, and a one-line description.

    ``retry_after`` is the server's ``Retry-After`` (seconds), when it sent one.
    """

    retryable: bool
    message: str
    retry_after: float | None = None


def retry_after(exc: BaseException) -> float | None:
    """Seconds a 429/503 asked us to wait: ``Retry-After`` (seconds, or an HTTP date) or
    ``retry-after-ms``, read from the exception's response headers (litellm keeps them in
    ``litellm_response_headers``, the openai SDK in ``response.headers``)."""
    for headers in (getattr(exc, "litellm_response_headers", None),
                    getattr(getattr(exc, "response", None), "headers", None)):
        if not headers:
            continue
        try:
            ms = headers.get("retry-after-ms")
            if ms is not None:
                return max(0.0, float(ms) / 1000.0)
            value = headers.get("retry-after")
            if value is None:
                continue
            try:
                return max(0.0, float(value))
            except ValueError:
                from email.utils import parsedate_to_datetime

                when = parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, AttributeError):
            continue  # an unreadable header is no instruction: fall back to our own backoff
    return None


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened; the form every call error is reported in."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify_exception(
    exc: BaseException, describe: Callable[[BaseException], str] = describe_exception
) -> Failure:
    """Default classification: status codes (``exc.status_code``), timeouts, connection errors.

    Works on litellm and openai exceptions without importing them (they carry ``status_code``).
    ``describe`` renders the exception in the message.
    """
    if isinstance(exc, TimeoutError):  # asyncio.timeout raises the builtin TimeoutError (3.11+)
        return Failure(True, f"timed out ({describe(exc)})")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return Failure(retryable, f"HTTP {status} {describe(exc)}", retry_after(exc))
    if isinstance(exc, (ConnectionError, OSError)):
        return Failure(True, f"connection error ({describe(exc)})")
    return Failure(False, describe(exc))


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    label: str,
    classify: Callable[[BaseException], Failure] = classify_exception,
) -> tuple[T, int]:
    """Await ``attempt()`` until it succeeds; return its value and the number of attempts made.

    Each attempt is bounded by ``policy.timeout``. Failures that ``classify`` calls retryable are
    retried up to ``policy.max_retries`` times with backoff; the final failure raises
    :class:`~pytest_bclone.errors.RetriesExhausted` naming ``label``, the attempts and the cause.
    Cancellation (Ctrl-C) is never swallowed.
    """
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            async with asyncio.timeout(policy.timeout):
                return await attempt(), attempts
        except TimeoutError:
            failure = Failure(True, f"timed out after {policy.timeout:g} s (--bclone-timeout)")
        except Exception as exc:  # noqa: BLE001 (every failure is classified, none escapes unexplained)
            failure = classify(exc)
        if not failure.retryable or attempts > policy.max_retries:
            why = "" if failure.retryable else " (not retryable)"
            raise RetriesExhausted(
                f"{label}: failed after {attempts} attempt{'s' if attempts > 1 else ''}{why}: {failure.message}",
                attempts=attempts,
                elapsed_s=time.monotonic() - start,
            )
        wait = policy.delay(attempts - 1)
        if failure.retry_after is not None:
            # The server said when to come back: honour it (capped, so a bogus hour-long value
            # cannot stall the run), but never come back sooner than our own backoff.
            wait = max(wait, min(failure.retry_after, policy.backoff_max))
        await asyncio.sleep(wait)
