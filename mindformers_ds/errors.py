"""Errors a user can fix, in a leaf module (it imports nothing of the package): config, data,
tokenizer, checkpoint and report code raise them, and the CLI catches them without loading
MindSpore. `str()` of each is the one line shown to the user, naming the file and the field
(or tensor) at fault."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value. `str()` is the one-line message shown to users."""

    def __init__(self, file: str, field_path: str, message: str):
        self.file, self.field, self.message = file, field_path, message
        super().__init__(f"{file}: {message}" if file else message)


class DataError(ValueError):
    """A bad data file (names the file and line)."""


class TokenizerError(ValueError):
    """A missing or unreadable tokenizer."""


class CheckpointError(ValueError):
    """One-line description of a bad checkpoint file; names the file and, where known, the tensor."""


class ReportError(RuntimeError):
    """A run directory `mfds report` cannot read."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; `str()` says where it stopped and how to resume."""


USER_ERRORS = (ConfigError, DataError, TokenizerError, CheckpointError, ReportError)
