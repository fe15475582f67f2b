"""Typed errors. The CLI prints an AblateError's message without a traceback."""

from __future__ import annotations

from typing import Any


class AblateError(Exception):
    """Base class of the errors a user can fix; the message says what is wrong and how to fix it."""


class ConfigError(AblateError):
    """A configuration value is invalid: names the arm, the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str, arm: str | None = None, hint: str = "") -> None:
        self.key, self.value, self.allowed, self.arm = key, value, allowed, arm
        where = f"arm '{arm}': " if arm else ""
        msg = f"{where}invalid value for '{key}': {value!r}; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class SweepError(AblateError):
    """A sweep file is malformed (names the file and, where known, the line)."""


class DataError(AblateError):
    """Data on disk is missing, truncated or disagrees with its metadata."""


class CheckpointError(AblateError):
    """A checkpoint cannot be read or does not fit the model."""


class AssetMissingError(AblateError):
    """A required local asset (checkpoint, tokenizer, weights file) is missing; says how to provide it."""


class LaunchError(AblateError):
    """A job could not be submitted or run."""


class StorageError(AblateError, OSError):
    """A write failed for want of space (or quota) or on a read-only file system: which path, how much
    it needed, what was free. An OSError too (errno kept), so code catching OSError still does."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopRequested(Exception):
    """A stage stopped early on request (SIGINT/SIGTERM, preemption), after its checkpoint: not a failure
    to report but a job to requeue or resume."""
