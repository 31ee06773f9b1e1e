"""Every error subterra raises on purpose, in one place.

A message says what went wrong and what to do next; the CLI prints it as one line
(no traceback) and the studio shows it in a notification.

    SubterraError
    ├── FlowFileError        a flow file cannot be read or parsed (names the file and field)
    ├── FlowNotFoundError    no stored flow and no file by that name
    ├── FlowInvalidError     a flow has validation errors (carries the problems)
    ├── VersionConflictError a flow was saved elsewhere since it was loaded
    ├── StoreError           the data dir or database cannot be used
    ├── BackendError         an LLM backend failed
    │   ├── BackendUnavailableError  cannot be reached / not installed / no key
    │   └── BackendResponseError     answered, but not usefully (malformed, refused)
    ├── GenerationError      dataset synthesis cannot proceed
    ├── TrainingError        compile cannot proceed
    ├── ServingError         an agent or server cannot run
    ├── EvaluationError      an evaluation cannot proceed
    └── JobError             a background job cannot be started, found, cancelled or resumed
        └── JobConflictError another live job already writes the same output
"""

from __future__ import annotations

from typing import Any


class SubterraError(Exception):
    """Base class: an expected failure whose message tells the user what to do."""

    exit_code = 1


class FlowFileError(SubterraError):
    """A flow file cannot be read or parsed. Exit code 2 in the CLI."""

    exit_code = 2

    def __init__(self, file: str, message: str, field: str | None = None):
        self.file = file
        self.field = field
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)


class FlowNotFoundError(SubterraError):
    exit_code = 2


class FlowInvalidError(SubterraError):
    def __init__(self, message: str, problems: list[Any] | None = None):
        self.problems = problems or []
        super().__init__(message)


class VersionConflictError(SubterraError):
    def __init__(self, flow: str, expected: int, actual: int):
        self.flow, self.expected, self.actual = flow, expected, actual
        super().__init__(
            f"flow '{flow}' was saved elsewhere (now version {actual}, you edited version {expected}); "
            "reload it to see the other change, or save yours as a copy"
        )


class StoreError(SubterraError):
    pass


class BackendError(SubterraError):
    pass


class BackendUnavailableError(BackendError):
    pass


class BackendResponseError(BackendError):
    pass


class ContextLengthError(BackendResponseError):
    """The prompt does not fit the model's context window: retrying the same request will not help,
    a shorter one may (the in-context agent drops its oldest turns, `engine.agents.in_context`)."""


class GenerationError(SubterraError):
    pass


class TrainingError(SubterraError):
    pass


class ServingError(SubterraError):
    pass


class EvaluationError(SubterraError):
    pass


class JobError(SubterraError):
    pass


class JobConflictError(JobError):
    pass
