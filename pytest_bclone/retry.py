"""Retries within a time budget, honouring Retry-After, and a per-attempt timeout, for any async call.

Used by the litellm agent and usable by judge evaluators::

    policy = RetryPolicy.from_config(config)
    value, attempts = await call_with_retries(lambda: litellm.acompletion(...), policy, label="judge")

Three kinds of failure:

* throttling (HTTP 429, 503): the provider asks us to slow down. Retried with capped exponential
  backoff and jitter, never sooner than its ``Retry-After``, for as long as the call's time budget
  (``--bclone-retry-budget``, default 300 s) lasts: a rate-limited run is slower, not wrong.
* transient faults (408, 409, 425, other 5xx, timeouts, connection errors): retried within the same
  budget, at most ``--bclone-max-retries`` times (a server that keeps failing is failing).
* fatal (401, 403, 404, 407, a missing or rejected API key even when a provider reports it as a
  500): no answer will ever come; :class:`~pytest_bclone.errors.ModelAccessError` stops the run.

Anything else (a 400, a malformed body) fails at once: asking again would get the same answer.
A call that fails for good raises :class:`~pytest_bclone.errors.RetriesExhausted`, which the
agent reports as a failed call (counted, never scored). Stdlib only: no litellm import here.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ModelAccessError, RetriesExhausted
from .redact import redact_text

if TYPE_CHECKING:
    from .config import BcloneConfig

T = TypeVar("T")

__all__ = [
    "FATAL_STATUSES", "THROTTLE_STATUSES", "Failure", "RetryPolicy", "call_with_retries", "classify_exception",
    "describe_exception", "is_missing_key_message",
]

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
"""HTTP statuses retried besides every 5xx (408 timeout, 409/425 transient conflicts, 429 rate limit)."""
THROTTLE_STATUSES = frozenset({429, 503})
"""Rate limiting and overload: retried for as long as the time budget lasts, not counted against
``max_retries`` (a busy provider is not a broken one)."""
FATAL_STATUSES = frozenset({401, 403, 404, 407})
"""Authentication, permission and not-found answers: retrying cannot help, the run stops."""

_MISSING_KEY = re.compile(
    r"(?:incorrect|invalid|missing|no|wrong|bad|expired|revoked)\s+(?:api[\s_\-]?key|auth(?:entication)?\s+token)"
    r"|api[\s_\-]?key\s+(?:is\s+)?(?:missing|not\s+(?:set|found|provided|valid)|required|invalid|incorrect)"
    r"|api_key client option must be set|missing credentials|unauthori[sz]ed|authentication (?:failed|error)"
    r"|permission denied",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one call.

    ``budget`` bounds the whole call, attempts and waits included (seconds): throttled calls
    (429/503) are retried until it is spent. ``max_retries`` caps the retries after other transient
    faults (5xx, timeouts, connection errors). ``timeout`` bounds each attempt (seconds). The n-th
    retry waits ``min(backoff_max, backoff_base * 2**n)`` scaled by a random factor in
    ``[1 - jitter, 1]``, so many workers that hit a 429 together do not come back together, and
    never less than the server's ``Retry-After``. Tests use a tiny ``backoff_base`` to stay fast.
    """

    max_retries: int = 6
    timeout: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    budget: float = 300.0

    @classmethod
    def from_config(cls, config: BcloneConfig, **overrides: Any) -> RetryPolicy:
        """The policy of ``--bclone-max-retries``, ``--bclone-timeout`` and ``--bclone-retry-budget``;
        ``overrides`` win."""
        values: dict[str, Any] = {"max_retries": config.max_retries, "timeout": config.timeout}
        budget = getattr(config, "retry_budget", None)
        if budget is not None:
            values["budget"] = float(budget)
        values.update(overrides)
        return cls(**values)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry, 60))
        factor = 1.0 - self.jitter * (rng.random() if rng is not None else random.random())
        return base * factor


@dataclass(frozen=True)
class Failure:
    """What one failed attempt was: whether asking again may help, and a one-line description.

    ``retry_after`` is the server's ``Retry-After`` (seconds), when it sent one. ``throttled``
    failures (429/503) are retried within the time budget only; ``fatal`` ones (authentication,
    not found) stop the run.
    """

    retryable: bool
    message: str
    retry_after: float | None = None
    throttled: bool = False
    fatal: bool = False
    status: int | None = None


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
    """``Type: first line of the message``, shortened and with secrets masked (an error body may
    echo the request's headers); the form every call error is reported in."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    line = redact_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_missing_key_message(text: str) -> bool:
    """Whether an error text says the credentials are missing or wrong ("Incorrect API key
    provided", "No API key", "api_key client option must be set"), whatever its status code."""
    return bool(_MISSING_KEY.search(text))


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
        message = f"HTTP {status} {describe(exc)}"
        # Some providers (and proxies) report a missing or bad key as a 500: the body says so.
        if status in FATAL_STATUSES or (status >= 400 and is_missing_key_message(str(exc))):
            return Failure(False, message, fatal=True, status=status)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return Failure(retryable, message, retry_after(exc), throttled=status in THROTTLE_STATUSES,
                       status=status)
    if isinstance(exc, (ConnectionError, OSError)):
        return Failure(True, f"connection error ({describe(exc)})")
    if is_missing_key_message(str(exc)):  # the SDK refused to send a request without a key
        return Failure(False, describe(exc), fatal=True)
    return Failure(False, describe(exc))


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    label: str,
    classify: Callable[[BaseException], Failure] = classify_exception,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[T, int]:
    """Await ``attempt()`` until it succeeds; return its value and the number of attempts made.

    Each attempt is bounded by ``policy.timeout``. Throttled failures are retried while
    ``policy.budget`` lasts; other retryable ones also at most ``policy.max_retries`` times. The
    final failure raises :class:`~pytest_bclone.errors.RetriesExhausted` naming ``label``, the
    attempts and the cause; a fatal one raises :class:`~pytest_bclone.errors.ModelAccessError` at
    once. Cancellation (Ctrl-C, SIGTERM) is never swallowed.
    """
    start = time.monotonic()
    attempts = faults = 0
    while True:
        attempts += 1
        try:
            async with asyncio.timeout(policy.timeout):
                return await attempt(), attempts
        except TimeoutError:
            failure = Failure(True, f"timed out after {policy.timeout:g} s (--bclone-timeout)")
        except Exception as exc:  # noqa: BLE001 (every failure is classified, none escapes unexplained)
            failure = classify(exc)
        elapsed = time.monotonic() - start
        s_ = "s" if attempts > 1 else ""
        if failure.fatal:
            raise ModelAccessError(f"{label}: {failure.message}", status=failure.status, detail=failure.message)
        if not failure.throttled:
            faults += 1
        wait = policy.delay(attempts - 1)
        if failure.retry_after is not None:
            # The server said when to come back: honour it (the budget caps a bogus hour-long
            # value), and never come back sooner than our own backoff.
            wait = max(wait, failure.retry_after)
        why = ""
        if not failure.retryable:
            why = " (not retryable)"
        elif faults > policy.max_retries:
            why = f" (--bclone-max-retries={policy.max_retries} reached)"
        elif elapsed + wait >= policy.budget:
            why = (f" (retry budget of {policy.budget:g} s spent, --bclone-retry-budget"
                   + (f"; the server asked to wait {failure.retry_after:g} s more" if failure.retry_after else "")
                   + ")")
        if why:
            raise RetriesExhausted(
                f"{label}: failed after {attempts} attempt{s_}{why}: {failure.message}",
                attempts=attempts,
                elapsed_s=elapsed,
            )
        await sleep(wait)
