"""Keep secrets out of every message, report, log and artifact.

Two nets, applied together by :func:`redact_text` and :func:`redact_obj`:

* known values: every secret the run was given, registered with :func:`register_secret` (the
  ``api_key`` and authorization headers of ``bclone_*_params``, see :func:`register_params`) or
  read from the environment (variables whose names end in ``_KEY``, ``_TOKEN``, ``_SECRET`` or
  ``_PASSWORD``, see :func:`register_environment`), replaced wherever they appear, whole or as
  the prefix/suffix a provider echoes (``Incorrect API key provided: sk-abc...wxyz``);
* patterns: provider key shapes (``sk-...``, ``sk-ant-...``, ``AIza...``, ``hf_...``), ``Bearer``
  credentials, and ``api_key=...`` / ``"Authorization": "..."`` pairs, for secrets we were never told
  about (a key in a proxy's config echoed in an error body).

Applied where text leaves the process: errors recorded on items (the litellm agent and
:func:`~pytest_bclone.retry.describe_exception`), option errors, and every report before it is
written. Stdlib only, cheap to import.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = [
    "MASK", "is_secret_name", "redact_obj", "redact_text", "register_environment", "register_params",
    "register_secret", "secrets_known",
]

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 8
"""Shorter values are not registered: masking every ``abc`` in a report would hide data, and a
key that short is not a credential worth the name."""

_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|apikey|key|token|secret|password|passwd|credentials?|authorization|auth)$",
    re.IGNORECASE,
)
_MASKED_FIELD = re.compile(
    r"^(?:.*[_\-])?(?:api[_\-]?key|apikey|secret|password|passwd|authorization|access[_\-]?token|"
    r"auth[_\-]?token|refresh[_\-]?token|id[_\-]?token|bearer|credentials?|secret[_\-]?access[_\-]?key)$",
    re.IGNORECASE,
)
"""Field names whose string value is masked whole wherever it appears in a report (narrower than
:data:`_SECRET_NAME`: ``key`` or ``tokens`` fields of a report hold data, not credentials)."""
_HEADER_PARAMS = ("extra_headers", "headers", "default_headers")

# Shapes of credentials that are secrets whoever wrote them. Each keeps its non-secret prefix
# (the header name, "Bearer ") so the redacted text still says what was there.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=\-]{6,}", re.IGNORECASE), rf"\1 {MASK}"),
    (re.compile(
        r"""(?P<k>["']?(?:[A-Za-z0-9]+[_\-])*(?:api[_\-]?key|apikey|authorization|x-api-key|access[_\-]?token|"""
        r"""secret|password|token)["']?\s*[:=]\s*)(?P<q>["']?)(?!\[REDACTED\])[^\s"',;}&)\]]{4,}""",
        re.IGNORECASE),
     rf"\g<k>\g<q>{MASK}"),
    (re.compile(r"\bsk-(?:ant-|proj-|or-)?[A-Za-z0-9_\-]{8,}"), MASK),
    # A key a provider echoed half-masked ("sk-abc1****************wxyz"): its visible ends are
    # still part of a secret.
    (re.compile(r"[A-Za-z0-9_\-]{2,}\*{4,}[A-Za-z0-9_\-]*"), MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), MASK),
    (re.compile(r"\b(?:hf|gh[pousr]|xox[abpr]|glpat)[_\-][A-Za-z0-9_\-]{10,}"), MASK),
)

_lock = threading.Lock()
_known: dict[str, None] = {}  # insertion-ordered set of registered values
_compiled: re.Pattern[str] | None = None

T = TypeVar("T")


def is_secret_name(name: str) -> bool:
    """Whether a parameter, header or variable called ``name`` holds a credential
    (``api_key``, ``OPENAI_API_KEY``, ``Authorization``, ``x-api-key``, ``HF_TOKEN``...)."""
    return bool(_SECRET_NAME.search(name.strip()))


def register_secret(value: Any) -> None:
    """Mask ``value`` (a str of at least :data:`MIN_SECRET_LENGTH` characters) from now on.

    A ``Bearer xyz`` header value registers ``xyz`` too, so the bare token is masked as well."""
    global _compiled
    if not isinstance(value, str):
        return
    values = [value.strip()]
    scheme, _, token = values[0].partition(" ")
    if token and scheme.lower() in ("bearer", "basic", "token"):
        values.append(token.strip())
    with _lock:
        added = False
        for v in values:
            if len(v) >= MIN_SECRET_LENGTH and v not in _known:
                _known[v] = None
                added = True
        if added:
            _compiled = None


def register_params(params: Mapping[str, Any] | None) -> None:
    """Register the secrets of a litellm parameter object: ``api_key`` (and any ``*_key``,
    ``*token``, ``*secret`` parameter) and the credential headers of ``extra_headers``/``headers``."""
    for name, value in (params or {}).items():
        if name in _HEADER_PARAMS and isinstance(value, Mapping):
            for header, hvalue in value.items():
                if is_secret_name(str(header)):
                    register_secret(hvalue)
        elif is_secret_name(str(name)):
            register_secret(value)


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Register the values of environment variables named like credentials (``*_KEY``, ``*_TOKEN``,
    ``*_SECRET``, ``*_PASSWORD``): providers read their keys from there (``OPENAI_API_KEY``)."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if is_secret_name(name):
            register_secret(value)


def secrets_known() -> int:
    """How many distinct values are registered (for tests and diagnostics)."""
    with _lock:
        return len(_known)


def _known_pattern() -> re.Pattern[str] | None:
    global _compiled
    with _lock:
        if _compiled is None and _known:
            # Longest first, so a key is masked whole before any registered value inside it.
            alternatives = sorted(_known, key=len, reverse=True)
            parts = [re.escape(v) for v in alternatives]
            # A provider may echo only the ends of a key ("sk-abcd************wxyz"): mask a
            # recognisable head of each long secret too.
            parts += [re.escape(v[:10]) + r"[A-Za-z0-9*._\-]*" for v in alternatives if len(v) >= 16]
            _compiled = re.compile("|".join(parts))
        return _compiled


def redact_text(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped string replaced by
    :data:`MASK`. Idempotent; text without secrets comes back unchanged (the same object)."""
    if not text:
        return text
    known = _known_pattern()
    out = known.sub(MASK, text) if known is not None else text
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    return text if out == text else out


def redact_obj(obj: T) -> T:
    """A copy of a JSON-like ``obj`` (dicts, lists, tuples, strings) with :func:`redact_text`
    applied to every string and the value of every credential-named key masked whole.

    Non-string leaves (numbers, None, booleans) are returned as they are; objects of other types
    are left alone (reports are JSON-like by construction)."""
    return _redact(obj, 0)  # type: ignore[no-any-return]


def _redact(obj: Any, depth: int) -> Any:
    if depth > 200:  # a self-referencing structure: leave the rest alone rather than recurse forever
        return obj
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, str) and v and _MASKED_FIELD.match(k.strip()):
                out[k] = MASK
            else:
                out[redact_text(k) if isinstance(k, str) else k] = _redact(v, depth + 1)
        return out
    if isinstance(obj, list):
        return [_redact(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v, depth + 1) for v in obj)
    return obj


def redact_lines(lines: Iterable[str]) -> list[str]:
    """:func:`redact_text` of each line."""
    return [redact_text(line) for line in lines]
