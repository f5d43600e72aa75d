"""Errors a user meets, in a leaf module (it imports nothing of the package), so the CLI can
catch them without loading MindSpore."""
from __future__ import annotations


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; `str()` says where it stopped and how to resume."""
