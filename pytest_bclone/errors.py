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
     |    +-- CacheMiss             cache mode `none` and no recording for a call
     +-- EvaluatorError         unknown evaluator, evaluator that returned a bad score
     +-- GateError              a parity assertion that cannot be evaluated (unknown cohort...)
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


class CacheMiss(AgentError):
    """Cache mode `none` forbids a call that has no recording."""


class EvaluatorError(BcloneError):
    """An unknown evaluator or an evaluator that misbehaved."""


class GateError(BcloneError):
    """A parity assertion that cannot be evaluated as written."""
