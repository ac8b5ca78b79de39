"""Errors a user can act on. The CLI prints these as one readable message, never a traceback."""

from __future__ import annotations

import re


class EmberError(Exception):
    """A problem with the user's input or setup; the message says what and how to fix it."""

    exit_code = 2  # what `ember` exits with after printing the message


class ConfigError(EmberError):
    """An invalid configuration key, value or combination."""


class TrainingStopped(EmberError):
    """Training stopped before its end on purpose (diverged, or a checkpoint could not be written); the message
    names the cause, what was kept and how to continue."""

    exit_code = 3


class DataError(EmberError):
    """A malformed record: names the file, the line, the field and what was expected."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # rebuilt from its parts when a worker process raises it (strict on_error)
        return type(self), (self.source, self.field, self.problem)

    @property
    def reason(self) -> str:
        """A short, groupable reason for skip reports (the problem without record specifics)."""
        return re.split(r"[:;]", self.problem, maxsplit=1)[0].strip()
