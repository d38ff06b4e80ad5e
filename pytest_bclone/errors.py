"""The one exception tree of pytest-bclone.

Every message names the bad value, where it came from, what was expected, and the fix::

    BcloneError
     +-- ConfigError            bad option / ini value (the plugin turns it into pytest.UsageError)
     +-- DatasetError           anything about the dataset store
     |    +-- DatasetNotFound       unknown version, missing root
     |    +-- IntegrityError        a data file whose sha256 differs from the manifest
     |    +-- RowError              a malformed trajectory row (line/row and field)
     |    +-- VersionExists         an attempt to overwrite a write-once version
     |    +-- UnsafeVersionName     a version name that tries to leave the root
     |    +-- ImportFormatError     an import file that is not of the named format
     +-- AgentError             building or calling an agent
     |    +-- ModelCallError        a model call that finally failed (after retries)
     |    |    +-- RetriesExhausted     ... carrying the attempts, retries and time spent
     |    +-- CacheMiss             cache mode `none` and no recording for a call
     |    +-- ModelAccessError      401/403/404 or a missing API key: never retried, stops the run
     +-- EvaluatorError         unknown evaluator, evaluator that returned a bad score
 |    +-- JudgeError            an LLM judge call that failed or answered garbage (counted, never scored)
     +-- GateError              a parity assertion that cannot be evaluated (unknown cohort...)

    BcloneWarning (UserWarning)
     +-- CacheWarning           a corrupt or unreadable cache entry (treated as a miss)
"""

from __future__ import annotations


class BcloneError(Exception):
    """Base of every error raised by pytest-bclone."""


class ConfigError(BcloneError):
    """A bad option or ini value."""


class DatasetError(BcloneError):
    """A problem with the dataset store, a version, or a row."""


class DatasetNotFound(DatasetError):
    """A dataset root, name or version that does not exist."""


class IntegrityError(DatasetError):
    """A data file whose content does not match the hash in its manifest."""


class RowError(DatasetError):
    """A trajectory row that does not match the schema."""


class VersionExists(DatasetError):
    """A write to a version that already exists (versions are write-once)."""


class UnsafeVersionName(DatasetError):
    """A dataset or version name that would leave the store root."""


class ImportFormatError(DatasetError):
    """An import file that cannot be read in the format it was given as."""


class AgentError(BcloneError):
    """A problem building or calling an agent."""


class ModelCallError(AgentError):
    """A model call that failed after every retry."""


class RetriesExhausted(ModelCallError):
    """A model call that failed on its last allowed attempt; says how many attempts were made."""

    def __init__(self, message: str, *, attempts: int, elapsed_s: float) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed_s = elapsed_s

    @property
    def retries(self) -> int:
        """Attempts after the first one."""
        return max(0, self.attempts - 1)


class ModelAccessError(AgentError):
    """A model the run cannot use at all: authentication refused (401, a missing or wrong API key,
    even one a provider reports as a 500), permission denied (403) or not found (404).

    Never retried: every later call would fail the same way. The gate stops the run with this one
    message, which names the agent (role and model) and the fix. ``status`` is the HTTP status,
    when there was one; ``detail`` the provider's answer without the call's label.
    """

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail if detail is not None else message


class CacheMiss(AgentError):
    """Cache mode `none` forbids a call that has no recording."""


class EvaluatorError(BcloneError):
    """An unknown evaluator or an evaluator that misbehaved."""


class JudgeError(EvaluatorError):
    """An LLM judge whose call failed or whose answer is not the strict JSON verdict asked for.

    Judge runners turn it into a :class:`~pytest_bclone.evaluators.JudgeFailure` record: counted and
    reported, excluded from the scores (never a silent 0 or 1).
    """


class GateError(BcloneError):
    """A parity assertion that cannot be evaluated as written."""


class BcloneWarning(UserWarning):
    """Base of every warning issued by pytest-bclone."""


class CacheWarning(BcloneWarning):
    """A cache entry that cannot be read; it is treated as a miss (and re-recorded when allowed)."""
